"""Binary-classification figures reported for the heads, and the threshold rules used to calibrate them."""

from __future__ import annotations

import numpy as np


def binary_metrics(labels: np.ndarray, probs: np.ndarray, threshold: float) -> dict[str, float | int | None]:
    """ROC-AUC (None when only one class is present), F1, accuracy and balanced accuracy at ``threshold``."""
    from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

    labels = np.asarray(labels, dtype=int)
    predicted = (np.asarray(probs) >= threshold).astype(int)
    both = len(set(labels.tolist())) == 2
    return {
        "n": int(len(labels)),
        "positives": int(labels.sum()),
        "predicted_positives": int(predicted.sum()),
        "roc_auc": round(float(roc_auc_score(labels, probs)), 4) if both else None,
        "f1": round(float(f1_score(labels, predicted, zero_division=0)), 4),
        "accuracy": round(float((predicted == labels).mean()), 4) if len(labels) else None,
        "balanced_accuracy": round(float(balanced_accuracy_score(labels, predicted)), 4) if both else None,
    }


def best_balanced_threshold(labels: np.ndarray, probs: np.ndarray) -> float:
    """The threshold that maximises balanced accuracy (Youden's J = TPR - FPR) on these labels.

    Placed halfway between the chosen score and the next lower one, so a small shift in scores
    does not flip the boundary case.
    """
    from sklearn.metrics import roc_curve

    fpr, tpr, thresholds = roc_curve(
        np.asarray(labels, dtype=int), np.asarray(probs), drop_intermediate=False
    )
    best = int(np.argmax(tpr - fpr))
    chosen = float(thresholds[best]) if np.isfinite(thresholds[best]) else 1.0
    lower = thresholds[best + 1] if best + 1 < len(thresholds) else 0.0
    return round((chosen + float(lower)) / 2, 4)


def rate_matching_threshold(labels: np.ndarray, probs: np.ndarray) -> float:
    """The threshold at which the head flags the same share of texts as the reference labels do."""
    labels, probs = np.asarray(labels, dtype=int), np.asarray(probs, dtype=float)
    if not labels.any():
        return 1.0
    ranked = np.sort(probs)[::-1]
    k = int(labels.sum())  # flag the k highest scores
    lower = ranked[k] if k < len(ranked) else 0.0
    return round(float((ranked[k - 1] + lower) / 2), 4)
