"""Deterministic, content-based splits shared by every part of the project.

Judges are validated, and the adapter is measured, on texts that no training step saw. A split
keyed on the normalised text (not on a file's row order) keeps a sentence that appears in several
source files, or in both ToxiGen groups, on the same side everywhere.
"""

from __future__ import annotations

import csv
import hashlib
from functools import lru_cache
from pathlib import Path

HELDOUT_BUCKETS = frozenset({0, 1})  # 2 of 10 buckets: about 20 % of any pool
DEV_BUCKETS = frozenset({2})  # 1 of 10: the judges choose models and thresholds here, not on held-out
N_BUCKETS = 10


def normalise(text: str) -> str:
    """Lower-case and collapse whitespace, so trivial variants hash alike."""
    return " ".join(str(text).lower().split())


def bucket(text: str) -> int:
    """Stable bucket in [0, N_BUCKETS) for a text."""
    digest = hashlib.md5(normalise(text).encode("utf-8")).hexdigest()
    return int(digest, 16) % N_BUCKETS


def is_heldout(text: str) -> bool:
    """True for texts reserved for validation (judges, quality benchmark): never train on them."""
    return bucket(text) in HELDOUT_BUCKETS


def is_dev(text: str) -> bool:
    """True for the judges' development texts: they choose head models and thresholds on these,
    so the held-out figures stay a test. Judges never train on them; adapters may."""
    return bucket(text) in DEV_BUCKETS


TEST_SET_COLUMNS = ("biased_text", "debiased_text", "unbiased_text")


@lru_cache(maxsize=4)
def paper_test_set(path: Path) -> frozenset[str]:
    """Normalised texts of the paper's test set, never to be trained on: inputs and every rewrite of
    one of its CSV files, or of every CSV in its folder. Training (train/data) and the judges
    (judges/train_data) exclude through this one function."""
    files = sorted(path.glob("*.csv")) if path.is_dir() else [path]
    texts: set[str] = set()
    for file in files:
        with file.open(encoding="utf-8", newline="") as handle:
            for row in csv.DictReader(handle):
                texts.update(normalise(row[c]) for c in TEST_SET_COLUMNS if (row.get(c) or "").strip())
    return frozenset(texts)
