"""Which harm a flagged sentence does: a softmax head over the judge's sentence embeddings.

Spans and reports say *why* a sentence was changed (gender, age, ...), not only that it was. The
head is trained on the bias set's rewritten sentences, whose ``dimension`` field names the group
they target, plus ParaDetox's toxic sentences as ``insult or profanity``; held-out texts
(mbias.splits) give its accuracy. It names a category for any text, so it is only asked about
sentences the toxicity and bias heads already flagged.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from mbias.judges.heads import Head
from mbias.judges.train_data import Example, paradetox

CATEGORIES = (
    "gender",
    "race or ethnicity",
    "religion",
    "age",
    "disability",
    "sexual orientation",
    "nationality or immigration",
    "socio-economic",
    "political",
    "insult or profanity",
)

# The bias set's dimension field -> the category a span reports.
DIMENSION_TO_CATEGORY = {
    "gender": "gender",
    "race_ethnicity": "race or ethnicity",
    "religion": "religion",
    "age": "age",
    "disability": "disability",
    "sexual_orientation": "sexual orientation",
    "nationality": "nationality or immigration",
    "socio_economic": "socio-economic",
    "political": "political",
    "appearance": "insult or profanity",  # mockery of looks: no group category of its own
    "toxicity": "insult or profanity",
}
PARADETOX_SAMPLE = 1500  # toxic sentences for the insult class, about the size of the larger groups


def category_examples(pairs_dir: Path, data: Path, judge_dir: Path | None = None) -> list[Example]:
    """(text, category index) examples: the bias set's rewritten sentences and the discriminatory
    advice (data/judge) by dimension, and a fixed sample of ParaDetox toxic sentences (every 8th)
    as insults."""
    examples = []
    files = sorted(pairs_dir.glob("*.jsonl"))
    if judge_dir and (judge_dir / "advice.jsonl").is_file():
        files.append(judge_dir / "advice.jsonl")
    for path in files:
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            category = DIMENSION_TO_CATEGORY.get(row.get("dimension"))
            if row.get("action", "rewrite") == "rewrite" and category:
                examples.append(Example(row["biased_text"], CATEGORIES.index(category), path.stem))
    toxic = [e for e in paradetox(data) if e.label == 1][::8][:PARADETOX_SAMPLE]
    examples += [Example(e.text, CATEGORIES.index("insult or profanity"), "paradetox") for e in toxic]
    return examples


def fit_category_head(features: np.ndarray, labels: np.ndarray, C: float = 1.0) -> Head:
    """Multinomial logistic regression with class-balanced weights, as a one-layer softmax head."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=C, max_iter=3000, class_weight="balanced")
    model.fit(features, labels)
    weight = np.zeros((features.shape[1], len(CATEGORIES)), dtype=np.float32)
    bias = np.full(len(CATEGORIES), -1e4, dtype=np.float32)  # a class never seen is never chosen
    for column, label in enumerate(model.classes_):
        weight[:, label] = model.coef_[column]
        bias[label] = model.intercept_[column]
    return Head(layers=[(weight, bias)], kind="softmax", labels=list(CATEGORIES))


def category_report(head: Head, features: np.ndarray, labels: np.ndarray) -> dict[str, object]:
    """Held-out accuracy overall and per category (recall), with counts."""
    predicted = head.predict_index(features)
    per = {}
    for index, name in enumerate(CATEGORIES):
        mask = labels == index
        if mask.any():
            per[name] = {"n": int(mask.sum()), "recall": round(float((predicted[mask] == index).mean()), 4)}
    return {
        "n": int(len(labels)),
        "accuracy": round(float((predicted == labels).mean()), 4) if len(labels) else None,
        "by_category": per,
        "counts": dict(Counter(CATEGORIES[i] for i in labels.tolist())),
    }
