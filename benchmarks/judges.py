"""Embedded judge benchmark: throughput, and agreement of the shipped heads with the paper's GPT labels.

Usage: python benchmarks/judges.py [--data ../shared/data] [--texts 512]

Throughput: ``EmbeddedJudge.score`` on distinct ~30-word texts in batches of 64, after a warm-up
batch (encoder loaded, memo bypassed by never repeating a text). Calibration figures are
recomputed here from mbias-test with the shipped thresholds; validation figures are those stored
in heads.json when the heads were trained (re-run ``mbias train-judges`` to reproduce them).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from mbias.judges.calibrate import gpt_labels
from mbias.judges.embedded import EmbeddedJudge
from mbias.judges.metrics import binary_metrics

BATCH = 64
WORDS = 30


def thirty_word_texts(sources: list[str], count: int) -> list[str]:
    """Distinct texts of exactly WORDS words, cut from a sliding window over the given sentences."""
    words = " ".join(sources).split()
    step = max(1, (len(words) - WORDS) // count)
    return [" ".join(words[i : i + WORDS]) for i in range(0, step * count, step)][:count]


def throughput(judge: EmbeddedJudge, texts: list[str]) -> float:
    judge.score(texts[:BATCH])  # warm-up: loads the encoder
    measured = texts[BATCH:]
    start = time.perf_counter()
    for offset in range(0, len(measured), BATCH):
        judge.score(measured[offset : offset + BATCH])
    return len(measured) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "data"
    )
    parser.add_argument("--texts", type=int, default=512)
    args = parser.parse_args()

    judge = EmbeddedJudge()
    judged = gpt_labels(args.data / "mbias-test")
    texts = thirty_word_texts(list(dict.fromkeys(j.text for j in judged)), args.texts + BATCH)
    rate = throughput(judge, texts)
    print(
        f"throughput: {rate:.1f} texts/s ({WORDS}-word texts, batch {BATCH}, warm, "
        f"torch threads {torch.get_num_threads()})"
    )

    validation = judge.heads.metadata.get("validation", {})
    print("\nvalidation on held-out texts (stored at training time, calibrated threshold):")
    print(f"{'head':10} {'source':12} {'n':>6} {'ROC-AUC':>8} {'F1':>6} {'acc':>6}")
    for head, report in validation.items():
        figures = report["validation_at_threshold"]
        for source, row in [("all", figures["all"]), *figures["by_source"].items()]:
            print(
                f"{head:10} {source:12} {row['n']:>6} {row['roc_auc']!s:>8} "
                f"{row['f1']:>6} {row['accuracy']:>6}"
            )

    print("\nagreement with the paper's GPT-3.5 labels on mbias-test (label = score >= 0.5), recomputed:")
    print(
        f"{'head':10} {'threshold':>9} {'n':>5} {'GPT pos':>7} {'ROC-AUC':>8} "
        f"{'F1':>6} {'acc':>6} {'bal acc':>7}"
    )
    for head, threshold in judge.thresholds.items():
        rows = [j for j in judged if j.head == head]
        labels = np.array([j.label for j in rows])
        probs = np.array([s[head] for s in judge.score([j.text for j in rows])])
        m = binary_metrics(labels, probs, threshold)
        print(
            f"{head:10} {threshold:>9} {m['n']:>5} {labels.mean():>7.3f} {m['roc_auc']!s:>8} {m['f1']:>6} "
            f"{m['accuracy']:>6} {m['balanced_accuracy']!s:>7}"
        )


if __name__ == "__main__":
    main()
