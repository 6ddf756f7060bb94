"""LLM annotation under human supervision: the paper's way of building training pairs.

``annotator`` asks an engine (through :class:`mbias.intervene.Debiaser`) for candidate rewrites and
the judges for their scores; ``store`` keeps items, candidates, scores, reviews and an audit log in
SQLite; ``web`` is the review app; ``export`` turns reviewed items into ``biased_text`` /
``debiased_text`` training pairs.
"""

from mbias.annotate.store import Conflict, Store

__all__ = ["Conflict", "Store"]
