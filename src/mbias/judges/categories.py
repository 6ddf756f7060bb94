"""Which harm a flagged sentence does: a softmax head over the judge's sentence embeddings.

Spans and reports say *why* a sentence was changed (gender, age, ...), not only that it was. The
head is trained on the bias set's rewritten sentences, whose ``dimension`` field names the group
they target, plus ParaDetox's toxic sentences as ``insult or profanity``; held-out texts
(mbias.splits) give its accuracy. It names a category for any text, so it is only asked about
sentences the toxicity and bias heads already flagged.

How sure it is says something too: a sentence the bias head only suspects (under its threshold,
over the screen's margin) that resembles no category clearly is plain prose more often than a
stereotype put mildly. The screen rewrites a suspect only when the head's top probability reaches
its threshold, chosen on the dev split (``suspect_threshold``).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from mbias.judges.heads import Head, HeadSet
from mbias.judges.train_data import PAIRED_FILES, Example, paradetox

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
# Share of the dev split's biased suspects the category threshold must keep for the rewriter.
SUSPECT_RECALL = 0.9
PARADETOX_SAMPLE = 1500  # toxic sentences for the insult class, about the size of the larger groups


def category_examples(pairs_dir: Path, data: Path, judge_dir: Path | None = None) -> list[Example]:
    """(text, category index) examples: the bias set's rewritten sentences and the biased side of
    data/judge's paired files (discriminatory advice, stereotypes) by dimension, and a fixed
    sample of ParaDetox toxic sentences (every 8th) as insults."""
    examples = []
    files = sorted(pairs_dir.glob("*.jsonl"))
    if judge_dir:
        files += [judge_dir / name for name in PAIRED_FILES if (judge_dir / name).is_file()]
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


def suspect_threshold(headset: HeadSet, dev: list[Example], embeddings: np.ndarray) -> float:
    """The category head's threshold: the highest top probability (two decimals, rounded down)
    that keeps ``SUSPECT_RECALL`` of the biased texts among ``dev``'s suspects, the texts the
    Debiaser's default screen catches only by its margin. Fair suspects are not part of the rule:
    on the dev split they are mostly fair rewrites that name their group, as sure as the biased
    ones; what the rule buys is read off plain LLM prose (docs/lab/results-log.md). Without a
    biased suspect on dev, 0 (every suspect goes to the rewriter)."""
    import math

    from mbias.intervene import DebiasSettings
    from mbias.judges.embedded import EmbeddedJudge

    if headset.category is None:
        return 0.0
    band = DebiasSettings().screen_band
    judge = EmbeddedJudge(heads=headset)
    scores = judge.score_embeddings(embeddings)
    suspects = [
        i
        for i, (example, score) in enumerate(zip(dev, scores))
        if example.label == 1 and judge.is_unsafe(score, margin=band) and not judge.is_unsafe(score)
    ]
    if not suspects:
        return 0.0
    top = np.sort(headset.category.top_probability(embeddings[suspects]))
    allowed = math.floor(len(top) * (1 - SUSPECT_RECALL) + 1e-9)  # suspects the threshold may lose
    return math.floor(float(top[allowed]) * 100) / 100
