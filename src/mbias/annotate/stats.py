"""Review statistics: how much of the LLM's output survives review, who reviewed what, and how
often two reviewers of the same item agree (the check that the guideline is applied consistently)."""

from __future__ import annotations

from collections import Counter
from itertools import combinations
from typing import Any

from mbias.annotate.store import DECISIONS, Store


def cohen_kappa(pairs: list[tuple[str, str]]) -> float | None:
    """Agreement beyond chance between first and second decisions; None when undefined."""
    if not pairs:
        return None
    observed = sum(a == b for a, b in pairs) / len(pairs)
    first, second = Counter(a for a, _ in pairs), Counter(b for _, b in pairs)
    expected = sum(first[label] * second[label] for label in first) / len(pairs) ** 2
    return None if expected == 1 else (observed - expected) / (1 - expected)


def review_stats(store: Store) -> dict[str, Any]:
    reviews = store.reviews()
    decisions = Counter(r["decision"] for r in reviews)
    per_reviewer: dict[str, Counter] = {}
    by_item: dict[int, list[dict[str, Any]]] = {}
    for review in reviews:
        per_reviewer.setdefault(review["reviewer"], Counter())[review["decision"]] += 1
        by_item.setdefault(review["item_id"], []).append(review)
    pairs = [pair for item_reviews in by_item.values() for pair in combinations(item_reviews, 2)]
    same_text = sum(a["final_text"] == b["final_text"] for a, b in pairs)
    total = len(reviews)
    return {
        "items": store.status_counts(),
        "reviews": total,
        "decisions": {d: decisions.get(d, 0) for d in DECISIONS},
        "acceptance_rate": (decisions["accepted"] + decisions["edited"]) / total if total else None,
        "unchanged_rate": decisions["accepted"] / total if total else None,
        "reviewers": {
            name: {"total": sum(counts.values()), **{d: counts.get(d, 0) for d in DECISIONS}}
            for name, counts in sorted(per_reviewer.items())
        },
        "double_reviewed": sum(len(r) > 1 for r in by_item.values()),
        "pairs": len(pairs),
        "decision_agreement": sum(a["decision"] == b["decision"] for a, b in pairs) / len(pairs)
        if pairs
        else None,
        "text_agreement": same_text / len(pairs) if pairs else None,
        "kappa": cohen_kappa([(a["decision"], b["decision"]) for a, b in pairs]),
    }
