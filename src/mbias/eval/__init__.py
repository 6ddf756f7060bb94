"""Evaluation: metrics and the paper's table (``metrics``, ``paper``), demographic probes
(``probes``), HTML reports (``report``), the development splits and the long-answer set the
benchmarks share (``dev``, ``answers``), and blind-read sheets (``reading``)."""
