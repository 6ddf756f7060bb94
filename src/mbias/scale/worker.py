"""What runs on the Ray workers: a shard read into chunks, and the actor that holds one Debiaser.

A chunk is up to ``batch_size`` consecutive records of one shard: the very slices
``Debiaser.stream`` cuts on the local path. Each actor call is one ``process_batch`` over exactly
the rows a local run of that shard batches together, so output equals the local path's even on
engines whose greedy tokens move with batch padding, not only on batch-invariant ones.

A user's error (a shard that is not valid JSON, a model file that is not there) travels as a row
with an ``error`` message, which the driver raises as one ``MbiasError`` line: Ray would deliver the
exception itself as a remote traceback, with the original's type lost.

Records travel between stages pickled in one binary column. Arrow's schema inference (what Ray
Data's own ``read_csv``/``read_json`` apply) would turn a CSV's digits into integers, a missing
JSON key into a null, and give id-less rows no index to be named by; the records would no longer
be the local path's. Reading with :func:`mbias.records.read_records` keeps them identical.
"""

from __future__ import annotations

import os
import pickle
import resource
import socket
import sys
import time
from typing import Any

from mbias import config
from mbias.errors import MbiasError
from mbias.intervene import Debiaser, DebiasSettings
from mbias.records import Record, read_records


def read_chunks(row: dict[str, Any], *, column: str | None, batch_size: int) -> list[dict[str, Any]]:
    """One input shard as rows of the job's dataset, one per chunk of ``batch_size`` records; each
    carries how many chunks its shard has, so the driver knows when the shard is complete."""
    try:
        records = read_records(row["source"], column)
    except MbiasError as exc:
        return [{"source": row["source"], "chunk": 0, "chunks": 1, "payload": b"", "error": str(exc)}]
    chunks = [records[i : i + batch_size] for i in range(0, len(records), batch_size)]
    return [
        {
            "source": row["source"],
            "chunk": index,
            "chunks": len(chunks),
            "payload": pickle.dumps(chunk, protocol=pickle.HIGHEST_PROTOCOL),
            "error": "",
        }
        for index, chunk in enumerate(chunks)
    ]


def build_debiaser(
    engine: str, judge: str | None, prompt_style: str | None, settings: DebiasSettings, threads: int | None
) -> Debiaser:
    """The Debiaser the local path builds, except that a llama.cpp engine gets at most ``threads``
    threads (the CPUs the actor holds). Its own default counts the cores idle when it starts, and
    workers starting together on one machine would each count all of them, then fight over them at
    every barrier. It still gets fewer when fewer are idle: on the 2-core machine, busy with another
    job, one worker holding both CPUs with 2 threads ran 14x slower than with 1 (benchmarks/ray_scale.py).
    """
    options = {}
    if threads and config.resolve(engine).spec.startswith("llamacpp:"):
        from mbias.engines.llamacpp import idle_cores

        options["threads"] = min(threads, idle_cores())
    return Debiaser(engine, judge=judge, prompt_style=prompt_style, settings=settings, engine_options=options)


def peak_rss_mib() -> float:
    """This process's peak resident memory so far (the model, the judge, the batch in flight)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024**2 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


class DebiasWorker:
    """A Ray Data actor: loads the engine and judge once, then rewrites one chunk per call."""

    def __init__(
        self,
        engine: str,
        judge: str | None,
        prompt_style: str | None,
        settings: DebiasSettings,
        threads: int | None = None,
    ):
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.debiaser: Debiaser | None = None
        self.error = ""  # why the Debiaser could not be built; every chunk then reports it
        try:
            self.debiaser = build_debiaser(engine, judge, prompt_style, settings, threads)
        except MbiasError as exc:
            self.error = str(exc)

    def __call__(self, batch: Any) -> Any:
        """``batch`` is a pyarrow Table of chunks (one, as the job asks); the result adds who ran
        each chunk, for how long, and the worker's peak memory."""
        import pyarrow as pa

        rows = batch.to_pylist()
        payloads, seconds, counts, errors = [], [], [], []
        for row in rows:
            started = time.perf_counter()
            done: list[Record] = []
            error = row["error"] or self.error
            if not error and self.debiaser is not None:
                try:
                    done = self.debiaser.process_batch(pickle.loads(row["payload"]))
                except MbiasError as exc:
                    error = str(exc)
            seconds.append(time.perf_counter() - started)
            counts.append(len(done))
            payloads.append(pickle.dumps(done, protocol=pickle.HIGHEST_PROTOCOL))
            errors.append(error)
        return pa.table(
            {
                "source": [r["source"] for r in rows],
                "chunk": [r["chunk"] for r in rows],
                "chunks": [r["chunks"] for r in rows],
                "payload": pa.array(payloads, type=pa.binary()),
                "rows": counts,
                "seconds": seconds,
                "worker": [self.name] * len(rows),
                "rss_mib": [peak_rss_mib()] * len(rows),
                "error": errors,
            }
        )
