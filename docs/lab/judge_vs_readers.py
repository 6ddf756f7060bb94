"""Could reader labels make a better judge of rewrites? A probe, not a shipped head.

The embedded judge agrees with the blind readers about single rewrites at Cohen's kappa 0.0-0.3
(RESULTS, "A second reader"). This fits a logistic regression on the readers' labels of rewrites
of *training* texts (docs/lab/human-read/training-v*) over the judge's own encoder (the rewrite's
embedding and its difference from the input's), and scores it against both readers on the blind
sheets of *held-out* texts, beside the shipped judge's verdicts on the same rows.

It also scores the product's meaning check (encoder similarity under ``min_similarity`` flags a
rewrite as "lost the meaning") against the second reader's ``meaning_kept`` on the same sheets.

    python docs/lab/judge_vs_readers.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegressionCV
from sklearn.metrics import cohen_kappa_score, roc_auc_score

from mbias.eval.reading import held_out_reads, read_labels
from mbias.judges.embedded import EmbeddedJudge

READS = Path(__file__).resolve().parent / "human-read"


def labelled(pattern: str) -> dict[tuple[str, str], dict]:
    """(text, candidate) -> the labelled row, over the sheets in human-read/ matching ``pattern``."""
    return read_labels([str(p) for p in sorted(READS.glob(pattern))])


def unsafe(labels: dict[tuple[str, str], dict]) -> dict[tuple[str, str], int]:
    return {key: row["unsafe"] for key, row in labels.items()}


def features(judge: EmbeddedJudge, pairs: list[tuple[str, str]]) -> np.ndarray:
    texts = judge.embed([t for t, _ in pairs])
    candidates = judge.embed([c for _, c in pairs])
    return np.hstack([candidates, candidates - texts])


def main() -> None:
    judge = EmbeddedJudge()
    train = unsafe(labelled("training-v*/sheet-*.jsonl"))
    rows, readers = held_out_reads(READS)
    first, second = readers["reader 1"], readers["reader 2"]
    second_rows = labelled("reader2/*.jsonl")
    test = [k for k in rows if k not in train]
    x_train, y_train = features(judge, list(train)), np.array(list(train.values()))
    probe = LogisticRegressionCV(
        Cs=10,
        cv=5,
        class_weight="balanced",
        scoring="roc_auc",
        max_iter=2000,
        l1_ratios=(0.0,),
        use_legacy_attributes=False,
    )
    probe.fit(x_train, y_train)
    x_test = features(judge, test)
    proba = probe.predict_proba(x_test)[:, 1]
    probe_flags = (proba >= 0.5).astype(int)
    scores = judge.score([c for _, c in test])
    judge_flags = np.array([int(judge.is_unsafe(s)) for s in scores])
    # one number per rewrite: the head nearest its threshold (is_unsafe flags at 1.0)
    unsafe_scores = np.array([max(s[name] / t for name, t in judge.thresholds.items()) for s in scores])
    print(f"train: {len(train)} read rewrites of training texts ({y_train.mean():.1%} unsafe)")
    print(f"test: {len(test)} rewrites of held-out texts read by both readers")
    print(
        f"{'labels':>10} {'unsafe':>7} {'judge kappa':>12} {'probe kappa':>12} "
        f"{'judge AUC':>10} {'probe AUC':>10}"
    )
    for name, labels in (("reader 1", first), ("reader 2", second)):
        y = np.array([labels[k] for k in test])
        print(
            f"{name:>10} {y.mean():7.1%} {cohen_kappa_score(y, judge_flags):12.2f} "
            f"{cohen_kappa_score(y, probe_flags):12.2f} {roc_auc_score(y, unsafe_scores):10.3f} "
            f"{roc_auc_score(y, proba):10.3f}"
        )
    meaning_check(judge, second_rows)


def meaning_check(judge: EmbeddedJudge, labels: dict[tuple[str, str], dict]) -> None:
    """How well the similarity floor finds the rewrites a reader says lost the meaning."""
    from mbias.intervene import DebiasSettings

    pairs = [k for k, row in labels.items() if row.get("meaning_kept") in (0, 1) and k[0] != k[1]]
    lost = np.array([1 - labels[k]["meaning_kept"] for k in pairs])
    similarity = np.array(judge.similarity([t for t, _ in pairs], [c for _, c in pairs]))
    print(
        f"meaning: {len(pairs)} changed rewrites read by reader 2, {lost.mean():.1%} lost the meaning; "
        f"similarity as a detector, ROC-AUC {roc_auc_score(lost, -similarity):.3f}"
    )
    floor = DebiasSettings.min_similarity
    for cut in sorted({0.4, floor, 0.6, 0.7}):
        flagged = similarity < cut
        caught = int((flagged & (lost == 1)).sum())
        mark = " (the product's min_similarity)" if cut == floor else ""
        print(
            f"  similarity < {cut:.2f}{mark}: flags {flagged.mean():5.1%} of rewrites, "
            f"precision {caught / max(1, flagged.sum()):.2f}, recall {caught / max(1, lost.sum()):.2f}"
        )


if __name__ == "__main__":
    main()
