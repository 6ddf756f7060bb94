"""Fit the toxicity and bias heads on the encoder's vectors and pick each head's model on dev texts.

Training uses the training side only (Example.trains); the dev texts choose the model, the held-out
texts give the validation figures (mbias.splits). Candidates are logistic regressions and
one-hidden-layer MLPs; the one with the best macro ROC-AUC over sources wins, so a large source
(ParaDetox) cannot hide a poor fit on a small one (ToxiGen).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from mbias.judges.heads import Head
from mbias.judges.metrics import binary_metrics
from mbias.judges.train_data import Example

CANDIDATES: dict[str, dict[str, Any]] = {
    "logreg-C0.1": {"kind": "logreg", "C": 0.1},
    "logreg-C1": {"kind": "logreg", "C": 1.0},
    "logreg-C10": {"kind": "logreg", "C": 10.0},
    "mlp-256-a1e-3": {"kind": "mlp", "alpha": 1e-3},
    "mlp-256-a1e-2": {"kind": "mlp", "alpha": 1e-2},
}


def balanced_weights(examples: list[Example]) -> np.ndarray:
    """Sample weights: each source weighs in proportion to sqrt(its size), classes equal within it.

    sqrt keeps the 700 ToxiGen statements visible next to 30,000 ParaDetox sentences without
    letting a few hundred texts dominate the fit.
    """
    per_source = Counter(e.source for e in examples)
    per_class = Counter((e.source, e.label) for e in examples)
    classes_in = {s: sum(1 for (src, _) in per_class if src == s) for s in per_source}
    weights = np.array(
        [
            np.sqrt(per_source[e.source]) / (classes_in[e.source] * per_class[(e.source, e.label)])
            for e in examples
        ]
    )
    return weights / weights.mean()


def _fold_scaler(layers: list[tuple[np.ndarray, np.ndarray]], mean: np.ndarray, scale: np.ndarray) -> list:
    """Make the first layer take raw embeddings: W' = W / s, b' = b - (m / s) @ W."""
    weight, bias = layers[0]
    folded = (weight / scale[:, None], bias - (mean / scale) @ weight)
    return [folded, *layers[1:]]


def fit_head(features: np.ndarray, labels: np.ndarray, weights: np.ndarray, spec: dict[str, Any]) -> Head:
    """Fit one candidate on standardised features and return it as a numpy :class:`Head`."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    mean, scale = features.mean(axis=0), features.std(axis=0) + 1e-6
    scaled = (features - mean) / scale
    if spec["kind"] == "logreg":
        model = LogisticRegression(C=spec["C"], max_iter=3000)
        model.fit(scaled, labels, sample_weight=weights)
        layers = [(model.coef_.T.astype(np.float32), model.intercept_.astype(np.float32))]
    else:
        model = MLPClassifier(
            hidden_layer_sizes=(256,), alpha=spec["alpha"], early_stopping=True, max_iter=200, random_state=0
        )
        model.fit(scaled, labels, sample_weight=weights)
        layers = [
            (w.astype(np.float32), b.astype(np.float32)) for w, b in zip(model.coefs_, model.intercepts_)
        ]
    layers = [(w.astype(np.float32), b.astype(np.float32)) for w, b in _fold_scaler(layers, mean, scale)]
    return Head(layers=layers, threshold=0.5, kind=spec["kind"])


def evaluate(head: Head, features: np.ndarray, examples: list[Example], threshold: float) -> dict[str, Any]:
    """Figures overall and per source; ``macro_roc_auc`` averages the sources that have both classes."""
    labels = np.array([e.label for e in examples])
    probs = head.predict_proba(features)
    report: dict[str, Any] = {"all": binary_metrics(labels, probs, threshold), "by_source": {}}
    for source in sorted({e.source for e in examples}):
        mask = np.array([e.source == source for e in examples])
        report["by_source"][source] = binary_metrics(labels[mask], probs[mask], threshold)
    aucs = [m["roc_auc"] for m in report["by_source"].values() if m["roc_auc"] is not None]
    report["macro_roc_auc"] = round(float(np.mean(aucs)), 4) if aucs else None
    return report


@dataclass
class TrainedHead:
    head: Head
    chosen: str
    candidates: dict[str, float | None]  # candidate -> dev macro ROC-AUC
    validation: dict[str, Any]  # held out
    counts: dict[str, Any]


def train_head(
    examples: list[Example], embed: Callable[[list[str]], np.ndarray], log: Callable[[str], None] = print
) -> TrainedHead:
    """Fit every candidate on the training side, keep the best by dev macro ROC-AUC."""
    train = [e for e in examples if e.trains]
    dev = [e for e in examples if e.dev]
    valid = [e for e in examples if e.heldout]
    x_train, x_dev, x_valid = (embed([e.text for e in part]) for part in (train, dev, valid))
    y_train, weights = np.array([e.label for e in train]), balanced_weights(train)
    scores: dict[str, float | None] = {}
    fitted: dict[str, Head] = {}
    for name, spec in CANDIDATES.items():
        start = time.perf_counter()
        fitted[name] = fit_head(x_train, y_train, weights, spec)
        scores[name] = evaluate(fitted[name], x_dev, dev, 0.5)["macro_roc_auc"]
        log(f"  {name}: dev macro ROC-AUC {scores[name]} ({time.perf_counter() - start:.1f} s)")
    chosen = max(scores, key=lambda n: scores[n] or 0.0)
    counts = {
        split: {
            f"{s}:{label}": n for (s, label), n in sorted(Counter((e.source, e.label) for e in part).items())
        }
        for split, part in (("train", train), ("dev", dev), ("validation", valid))
    }
    return TrainedHead(
        head=fitted[chosen],
        chosen=chosen,
        candidates=scores,
        validation=evaluate(fitted[chosen], x_valid, valid, 0.5),
        counts=counts,
    )
