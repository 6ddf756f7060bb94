"""Each head's threshold, chosen on the judges' dev split; the paper's GPT-3.5 labels, for reports.

Thresholds: the one that maximises balanced accuracy averaged over the sources of the head's pool,
on dev texts only (mbias.splits.is_dev): no head trained on them and no held-out figure is read
to pick them, so benchmarks/judges.py's held-out figures remain a test. Averaging over sources
makes the 480 advice pairs and the 1,400 fair sentences count as much as 30,000 ParaDetox
sentences; a source with one class (the fair sentences) counts its accuracy.

The paper's test set (mbias-test) is never used to choose anything: ``gpt_labels`` reads its
GPT-3.5 (DeepEval) scores so benchmarks/judges.py can report agreement with them.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mbias.errors import MbiasError
from mbias.judges.heads import HeadSet
from mbias.judges.metrics import binary_metrics
from mbias.judges.train_data import Example

# file -> (text column, bias score column, toxicity score column)
GPT_SCORED_FILES = {
    "train-500-biased-evaluation.csv": ("biased_text", "Original_Bias_Score", "Original_Toxicity_Score"),
    "train-500-debiased-evaluation.csv": ("debiased_text", "Bias_Score", "Toxicity_Score"),
    "mbias-evaluation.csv": ("debiased_text", "Bias_Score", "Toxicity_Score"),
    "OG-model-evaliation.csv": ("unbiased_text", "Bias_Score", "Toxicity_Score"),
    "general-ft-evaluation.csv": ("debiased_text", "Bias_Score", "Toxicity_Score"),
}


@dataclass(frozen=True)
class Judged:
    text: str
    head: str
    label: int  # GPT score >= 0.5
    file: str


def _score(value: str | None) -> float | None:
    try:
        number = float(value or "")
    except ValueError:
        return None
    return None if number < 0 or np.isnan(number) else number  # -1 = the judge call failed


def gpt_labels(test_dir: Path) -> list[Judged]:
    """Every (text, head) the paper's judge scored successfully, as a 0/1 label."""
    judged = []
    for name, (text_column, bias_column, toxicity_column) in GPT_SCORED_FILES.items():
        path = test_dir / name
        if not path.exists():
            raise MbiasError(f"{path}: missing; the GPT agreement figures need the mbias-test files")
        with path.open(encoding="utf-8", newline="") as handle:
            for row in csv.DictReader(handle):
                text = (row.get(text_column) or "").strip()
                if not text:
                    continue
                for head, column in (("bias", bias_column), ("toxicity", toxicity_column)):
                    score = _score(row.get(column))
                    if score is not None:
                        judged.append(Judged(text, head, int(score >= 0.5), name))
    return judged


THRESHOLD_GRID = np.round(np.arange(0.005, 1.0, 0.005), 3)


def macro_balanced_accuracy(
    labels: np.ndarray, probs: np.ndarray, sources: np.ndarray, grid: np.ndarray = THRESHOLD_GRID
) -> np.ndarray:
    """Per threshold of ``grid``: balanced accuracy averaged over sources. Sources of one class
    (files of fair sentences) count together as one source, their accuracies averaged: a new file
    of fair sentences then adds examples, not a vote for a higher threshold (judge v8: counted
    apart, three fair files moved it from 0.40 to 0.615 and cost 4 points of advice recall)."""
    flagged = probs[None, :] >= grid[:, None]
    per_source, one_class = [], {0: [], 1: []}
    for source in np.unique(sources):
        mask = sources == source
        present = [c for c in (0, 1) if (mask & (labels == c)).any()]
        hits = [(flagged[:, mask & (labels == c)] == bool(c)).mean(axis=1) for c in present]
        if len(present) == 1:
            one_class[present[0]].append(hits[0])
        else:
            per_source.append(np.mean(hits, axis=0))
    per_source += [np.mean(group, axis=0) for group in one_class.values() if group]
    return np.mean(per_source, axis=0)


def calibrate(
    heads: HeadSet, pools: dict[str, list[Example]], embed: Callable[[list[str]], np.ndarray]
) -> dict:
    """Set each head's threshold on its pool's dev texts, in place; return the figures there."""
    report: dict[str, Any] = {}
    for name, head in heads.heads.items():
        dev = [e for e in pools[name] if e.dev]
        if not dev:
            raise MbiasError(f"{name}: no dev texts (mbias.splits.is_dev) to choose a threshold on")
        labels = np.array([e.label for e in dev])
        sources = np.array([e.source for e in dev])
        probs = head.predict_proba(embed([e.text for e in dev]))
        scores = macro_balanced_accuracy(labels, probs, sources)
        head.threshold = float(THRESHOLD_GRID[int(np.argmax(scores))])
        report[name] = {
            "rule": "maximise balanced accuracy averaged over sources on the dev split",
            "threshold": head.threshold,
            "dev_macro_balanced_accuracy": round(float(scores.max()), 4),
            "dev_at_threshold": binary_metrics(labels, probs, head.threshold),
            "dev_by_source": {
                source: binary_metrics(labels[sources == source], probs[sources == source], head.threshold)
                for source in sorted(set(sources.tolist()))
            },
        }
    return report
