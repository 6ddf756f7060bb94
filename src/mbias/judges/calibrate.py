"""Set each head's threshold against the paper's GPT-3.5 (DeepEval) scores on its test set.

Calibration only: these texts are never training data. The pool mixes the biased inputs with the
rewrites of four systems, as the Debiaser sees them (screen inputs, verify rewrites); label = GPT
score >= 0.5. The threshold makes each head flag the same share of the pool as GPT does.

Why not the balanced-accuracy optimum: the heads rank these texts only moderately like GPT does
(ROC-AUC about 0.72), and that optimum lands at extreme thresholds (0.004 for toxicity, which
flags 44 % of the human gold rewrites and cuts held-out accuracy from 0.92 to 0.81). Matching
GPT's rate keeps the heads' own held-out accuracy and flags gold rewrites about as often as GPT
does. The optimum is still reported next to the chosen threshold. A two-fold split by text
(mbias.splits.bucket parity) gives an out-of-fold estimate of the agreement on unseen texts.
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
from mbias.judges.metrics import best_balanced_threshold, binary_metrics, rate_matching_threshold
from mbias.splits import bucket

# file -> (text column, bias score column, toxicity score column)
CALIBRATION_FILES = {
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
    for name, (text_column, bias_column, toxicity_column) in CALIBRATION_FILES.items():
        path = test_dir / name
        if not path.exists():
            raise MbiasError(f"{path}: missing; calibration needs the mbias-test files")
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


def calibrate(heads: HeadSet, test_dir: Path, embed: Callable[[list[str]], np.ndarray]) -> dict[str, Any]:
    """Set ``heads`` thresholds in place; return agreement figures with the GPT labels per head."""
    judged = gpt_labels(test_dir)
    report: dict[str, Any] = {}
    for name, head in heads.heads.items():
        rows = [j for j in judged if j.head == name]
        labels = np.array([j.label for j in rows])
        probs = head.predict_proba(embed([j.text for j in rows]))
        threshold = rate_matching_threshold(labels, probs)
        balanced_optimum = best_balanced_threshold(labels, probs)
        fold = np.array([bucket(j.text) % 2 for j in rows])
        out_of_fold = np.zeros(len(rows), dtype=int)
        for side in (0, 1):
            fold_threshold = rate_matching_threshold(labels[fold != side], probs[fold != side])
            out_of_fold[fold == side] = probs[fold == side] >= fold_threshold
        files = {}
        for file in CALIBRATION_FILES:
            mask = np.array([j.file == file for j in rows])
            files[file] = binary_metrics(labels[mask], probs[mask], threshold)
        head.threshold = threshold
        report[name] = {
            "rule": "flag the same share as GPT-3.5 DeepEval (label = score >= 0.5) on the pool",
            "threshold": threshold,
            "at_threshold": binary_metrics(labels, probs, threshold),
            "at_0.5": binary_metrics(labels, probs, 0.5),
            "balanced_accuracy_optimum": {
                "threshold": balanced_optimum,
                **binary_metrics(labels, probs, balanced_optimum),
            },
            "two_fold_out_of_fold_accuracy": round(float((out_of_fold == labels).mean()), 4),
            "two_fold_out_of_fold_balanced_accuracy": binary_metrics(labels, out_of_fold.astype(float), 0.5)[
                "balanced_accuracy"
            ],
            "gpt_positive_rate": round(float(labels.mean()), 4),
            "by_file": files,
        }
    return report
