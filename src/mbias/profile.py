"""Where the time goes: named stages timed with perf_counter and summed over the process.

Stages nest (the rewrite stage holds the engine's prefill and decode), and each second is charged
to the innermost stage running at that moment, so the stages of one thread add up to its time in
them. ``mbias debias --profile`` prints the table; benchmarks/throughput.py reads it. The cost is
two clock reads per stage entered, a few per batch, so it is always on.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_seconds: dict[str, float] = defaultdict(float)
_calls: dict[str, int] = defaultdict(int)
_tallies: dict[str, int] = defaultdict(int)
_local = threading.local()


def _charge(name: str, seconds: float) -> None:
    with _lock:
        _seconds[name] += seconds


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Time the block as ``name``; an enclosing stage is paused meanwhile (exclusive time)."""
    stack: list[list] = _local.__dict__.setdefault("stack", [])
    now = time.perf_counter()
    if stack:
        outer = stack[-1]
        _charge(outer[0], now - outer[1])
    stack.append([name, now])
    with _lock:
        _calls[name] += 1
    try:
        yield
    finally:
        now = time.perf_counter()
        _charge(name, now - stack.pop()[1])
        if stack:
            stack[-1][1] = now  # the enclosing stage resumes


def tally(name: str, amount: int) -> None:
    """Count something the stages process (prompt tokens, new tokens), for rates per stage."""
    with _lock:
        _tallies[name] += amount


def tallies() -> dict[str, int]:
    with _lock:
        return dict(_tallies)


def snapshot() -> dict[str, tuple[float, int]]:
    """Seconds and times entered, per stage, since the start (or the last reset)."""
    with _lock:
        return {name: (_seconds[name], _calls[name]) for name in _seconds}


def reset() -> None:
    with _lock:
        _seconds.clear()
        _calls.clear()
        _tallies.clear()
