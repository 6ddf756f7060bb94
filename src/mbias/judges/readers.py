"""Heads that predict what a blind reader says of a rewrite: still unsafe, and meaning kept.

Why they exist: the text heads score a candidate alone, and on rewrites they agree with blind
readers at kappa 0.0-0.3. Choosing among candidates by them (then by similarity) picked a candidate
readers found unsafe 24 % of the time where a random pick did 16 %, these heads 10 % (423 held-out
texts with 8 labelled candidates each; docs/lab/choose_by_readers.py). These heads read the
*pair*: the candidate's vector, its products and differences with the source's, the text heads'
scores, the packaged encoder's similarity (meaning kept), the length ratio and the word overlap;
they are fitted on the readers' own labels of model rewrites of training texts
(``training-*/sheet-*.jsonl`` under a reads folder such as docs/lab/human-read), never of held-out
ones. The Debiaser ranks a flagged unit's candidates by their product, the probability that a
reader finds a candidate both safe and faithful.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from mbias.judges.heads import Head
from mbias.splits import is_heldout

READER_HEADS = ("unsafe", "kept")  # a reader's "unsafe" (1: still biased or toxic), "meaning_kept"
SHEETS = "training-*/sheet-*.jsonl"  # readers' labels of rewrites of training texts
C_GRID = (0.1, 0.3, 1.0, 3.0, 10.0)  # logistic regression strengths, chosen by cross-validation
FOLDS = 5
MIN_REWRITES = 50  # fewer labelled rewrites than this make no pair of heads worth shipping


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9']+", text.lower()))


def pair_features(judge: Any, sources: list[str], candidates: list[str]) -> np.ndarray:
    """One row per (source, candidate): what the reader heads read, the same in training and use."""
    source, candidate = judge.embed(sources), judge.embed(candidates)
    names = list(judge.heads.heads)
    scores = judge.score_embeddings(candidate)
    text_scores = np.array([[s[n] for n in names] for s in scores], dtype=np.float32).reshape(-1, len(names))
    plain = np.array(judge.similarity(sources, candidates), dtype=np.float32)
    ratio = np.array([len(c) / max(len(s), 1) for s, c in zip(sources, candidates)], dtype=np.float32)
    overlap = np.array(
        [
            len(_words(s) & _words(c)) / max(len(_words(s) | _words(c)), 1)
            for s, c in zip(sources, candidates)
        ],
        dtype=np.float32,
    )
    product = source * candidate
    columns = np.stack(
        [product.sum(1), plain, ratio, np.minimum(ratio, 1 / np.maximum(ratio, 1e-3)), overlap], 1
    )
    return np.hstack([candidate, product, np.abs(source - candidate), text_scores, columns])


def reader_rows(reads: Path) -> list[tuple[str, str, int, int]]:
    """(text, candidate, unsafe, meaning_kept) for every rewrite a reader labelled both ways in the
    training sheets under ``reads``; held-out texts are skipped, whatever sheet holds them. Dev
    texts stay in: these heads choose their strength by cross-validation, not on the dev split."""
    from mbias.eval.reading import read_labels

    labels = read_labels([str(p) for p in sorted(reads.glob(SHEETS))])
    return [
        (text, candidate, int(row["unsafe"]), int(row["meaning_kept"]))
        for (text, candidate), row in labels.items()
        if candidate.strip() and row.get("meaning_kept") in (0, 1) and not is_heldout(text)
    ]


def fit_reader_heads(
    features: np.ndarray, rows: list[tuple[str, str, int, int]]
) -> tuple[dict[str, Head], dict]:
    """A logistic head per reader label on the raw features (unit vectors and scores share a scale;
    standardised, the 1,000-odd vector columns drowned the few that carry most: cross-validated
    ROC-AUC 0.74 against 0.78), classes weighed equally, its strength chosen by cross-validated
    ROC-AUC with folds split by input text, so a text's candidates never straddle a fold."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold, cross_val_score

    folds = list(GroupKFold(FOLDS).split(features, groups=[text for text, *_ in rows]))
    heads, report = {}, {"rewrites": len(rows), "folds": f"{FOLDS}, by input text"}
    for index, name in enumerate(READER_HEADS):
        labels = np.array([row[2 + index] for row in rows])

        def model(c: float) -> LogisticRegression:
            return LogisticRegression(C=c, max_iter=5000, class_weight="balanced")

        auc = {
            c: float(cross_val_score(model(c), features, labels, cv=folds, scoring="roc_auc").mean())
            for c in C_GRID
        }
        best = max(auc, key=auc.get)
        fitted = model(best).fit(features, labels)
        layers = [(fitted.coef_.T.astype(np.float32), fitted.intercept_.astype(np.float32))]
        heads[name] = Head(layers=layers, kind="logreg")
        report[name] = {
            "C": best,
            "cv_roc_auc": round(auc[best], 4),
            "positive_share": round(float(labels.mean()), 4),
        }
    return heads, report


def acceptability(heads: dict[str, Head], features: np.ndarray) -> np.ndarray:
    """The chance a reader finds each candidate both safe and faithful (the heads taken as independent)."""
    return (1.0 - heads["unsafe"].predict_proba(features)) * heads["kept"].predict_proba(features)
