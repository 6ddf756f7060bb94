"""Reviewed items as training pairs in the paper's schema, each with where it came from.

An item is exported when its status (set by its latest review) is ``accepted`` or ``edited``, it
has at least ``min_reviews`` reviews, and no reviewer rejected it (reviewers who disagree leave the
item out, whoever decided last); the target is the latest review's text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mbias.annotate.store import Store
from mbias.records import Record, write_records


def _candidate_origin(review: dict[str, Any]) -> str:
    if review["decision"] == "accepted":
        return review["candidate_origin"]
    return f"edited:{review['candidate_origin']}" if review["candidate_origin"] else "edited"


def training_pairs(store: Store, min_reviews: int = 1) -> list[Record]:
    pairs = []
    for item in store.reviewed_items(min_reviews):
        if any(review["decision"] == "rejected" for review in item["reviews"]):
            continue
        final = item["reviews"][-1]
        record: Record = {
            "id": f"item-{item['id']}",
            "biased_text": item["text"],
            "debiased_text": final["final_text"],
            "status": item["status"],
            "item_id": item["id"],
            "source_file": item["source_file"],
            "source_id": item["source_id"],
            "group": item["group_name"],
            "dimension": item["dimension"],
            "origin": item["origin"],
            "candidate_origin": _candidate_origin(final),
            "reviewers": [r["reviewer"] for r in item["reviews"]],
            "decisions": [r["decision"] for r in item["reviews"]],
            "created_at": item["created_at"],
            "reviewed_at": final["updated_at"],
        }
        if item["meta"]:
            record["meta"] = item["meta"]
        pairs.append(record)
    return pairs


def export_pairs(store: Store, output: str | Path, min_reviews: int = 1) -> int:
    """Write the pairs with :func:`mbias.records.write_records`; returns how many were written
    (none: the file is left as it was)."""
    pairs = training_pairs(store, min_reviews)
    if pairs:
        write_records(output, pairs)
    return len(pairs)
