"""Binary-classification figures reported for the heads."""

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
