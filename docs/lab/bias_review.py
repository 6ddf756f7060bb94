"""Quality control of the bias set (data/bias) through the annotation store, as a human reviewer.

The rows are imported with `mbias annotate --import-pairs --judge embedded`; this script then
records one reviewer's decisions in the store (so each one is in its audit log), writes the reviewed
set back over the data files, exports the decisions with the judge's scores before and after, and
prints the figures of docs/DATA.md "Quality control".

    python docs/lab/bias_review.py decide  --db DB DECISIONS.jsonl
    python docs/lab/bias_review.py export  --db DB DECISIONS.jsonl
    python docs/lab/bias_review.py figures --db DB

DECISIONS.jsonl has one object per data row: ``id``, ``decision`` (accepted | edited | rejected),
``new_target`` (edited rows), ``note``, ``read`` (whether a person read the row). The exported log
carries the same fields, so it can be replayed against a fresh import of the pre-review files.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path
from statistics import mean
from typing import Annotated, Any

import typer

from mbias.annotate.store import Store
from mbias.errors import MbiasError
from mbias.records import read_records, write_records
from mbias.splits import is_heldout

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "data" / "bias"
LOG = DATA / "review" / "review_log.jsonl"  # a subfolder: readers glob data/bias/*.jsonl for pairs
REVIEWER = "qc-reviewer"
SIMILARITY_FLOOR = 0.5
METRICS = ("toxicity", "bias", "unsafe", "similarity")

app = typer.Typer(add_completion=False, help=__doc__.split("\n\n")[0])
Db = Annotated[str, typer.Option(help="Annotation database filled by `mbias annotate --import-pairs`.")]


def _decisions(path: str) -> dict[str, dict[str, Any]]:
    return {str(r["id"]): r for r in read_records(path, "id")}


def _items(store: Store) -> list[dict[str, Any]]:
    """Every item with candidates, scores and reviews, in import order (the store never deletes
    items, so their ids run from 1 without gaps)."""
    items = []
    while (item := store.item(len(items) + 1)) is not None:
        items.append(item)
    return items


def flags(item: dict[str, Any], judge: Any) -> list[str]:
    """Why the judge flags an imported row: its target is unsafe per head, or kept too little meaning."""
    scores = item["candidates"][0]["scores"]
    found = [name for name, label in judge.labels(scores).items() if label]
    if item["meta"].get("action") == "rewrite" and scores["similarity"] < SIMILARITY_FLOOR:
        found.append("similarity")
    return found


@app.command()
def decide(decisions: str, db: Db, reviewer: str = REVIEWER) -> None:
    """Record each row's decision in the store as ``reviewer`` (the store writes the audit log)."""
    wanted = _decisions(decisions)
    store = Store(db, create=False)
    done = 0
    while (item_id := store.next_item(reviewer)) is not None:
        item = store.item(item_id)
        row = wanted.get(item["source_id"])
        if row is None:
            raise MbiasError(f"{decisions}: no decision for {item['source_id']}")
        candidate = item["candidates"][0]["id"]
        if row["decision"] == "rejected":
            store.decide(item_id, reviewer, "rejected", item["version"])
        else:
            store.decide(
                item_id, reviewer, row["decision"], item["version"], candidate, row.get("new_target")
            )
        done += 1
    print(f"{db}: {done} decisions by {reviewer}; {store.status_counts()}", file=sys.stderr)


def _final(item: dict[str, Any], reviewer: str) -> dict[str, Any] | None:
    return next((r for r in item["reviews"] if r["reviewer"] == reviewer), None)


@app.command()
def export(decisions: str, db: Db, reviewer: str = REVIEWER, log: str = str(LOG)) -> None:
    """Rebuild each imported file from the store: reviewed targets in place, rejected rows out,
    ``review`` added; and the decision log. The imported rows live in the store, so a re-run
    gives the same files."""
    from mbias.judges import load_judge

    judge = load_judge("embedded")
    notes = _decisions(decisions)
    items = _items(Store(db, create=False))
    reviews = {i["id"]: _final(i, reviewer) for i in items}
    if missing := [i["source_id"] for i in items if reviews[i["id"]] is None]:
        raise MbiasError(f"{len(missing)} rows not reviewed by {reviewer}, e.g. {missing[0]}")
    edited = [i for i in items if reviews[i["id"]]["decision"] == "edited"]
    texts = [reviews[i["id"]]["final_text"] for i in edited]
    sims = judge.similarity([i["text"] for i in edited], texts)
    after = {
        i["id"]: {**s, "unsafe": float(judge.is_unsafe(s)), "similarity": sim}
        for i, s, sim in zip(edited, judge.score(texts), sims)
    }
    files: dict[str, list[dict[str, Any]]] = defaultdict(list)
    entries = []
    for item in items:
        review, meta = reviews[item["id"]], item["meta"]
        before = {k: item["candidates"][0]["scores"][k] for k in METRICS}
        kept = review["decision"] != "rejected"
        target = review["final_text"]
        action = ("keep" if target == item["text"] else "rewrite") if kept else None
        if kept:
            files[item["source_file"]].append(
                {
                    "id": item["source_id"],
                    "biased_text": item["text"],
                    "debiased_text": target,
                    "group": item["group_name"],
                    "dimension": item["dimension"],
                    **{**meta, "action": action},
                    "review": review["decision"],
                }
            )
        entries.append(
            {
                "id": item["source_id"],
                "decision": review["decision"],
                "source_text": item["text"],
                "old_target": item["candidates"][0]["text"],
                "new_target": target,
                "old_action": meta["action"],
                "new_action": action,
                "judge_before": before,
                "judge_after": after.get(item["id"], before) if kept else None,
                "flagged": flags(item, judge),
                "read": notes[item["source_id"]]["read"],
                "note": notes[item["source_id"]]["note"],
                "reviewer": reviewer,
                "reviewed_at": review["updated_at"],
            }
        )
    for path, rows in files.items():
        write_records(path, rows)
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    write_records(log, entries)
    print(f"{sum(map(len, files.values()))} rows in {len(files)} files; {len(entries)} decisions -> {log}")


def _table(before: dict[str, list[dict[str, Any]]], after: dict[str, list[dict[str, Any]]]) -> list[str]:
    """One row per dimension, each cell ``before -> after``."""
    lines = [
        "| dimension | rows | targets unsafe | toxicity src / tgt | bias src / tgt | similarity (rewrites) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]

    def cells(rows: list[dict[str, Any]]) -> list[str]:
        def avg(side: str, metric: str) -> float:
            return mean(r[side][metric] for r in rows)

        sims = mean(r["tgt"]["similarity"] for r in rows if r["action"] == "rewrite")
        return [
            str(len(rows)),
            f"{avg('tgt', 'unsafe'):.1%}",
            f"{avg('src', 'toxicity'):.3f} / {avg('tgt', 'toxicity'):.3f}",
            f"{avg('src', 'bias'):.3f} / {avg('tgt', 'bias'):.3f}",
            f"{sims:.3f}",
        ]

    for name in sorted(before, key=lambda g: (g == "all", g)):
        pairs = zip(cells(before[name]), cells(after[name]))
        lines.append(f"| {name} | " + " | ".join(a if a == b else f"{a} -> {b}" for a, b in pairs) + " |")
    return lines


@app.command()
def figures(db: Db, reviewer: str = REVIEWER, log: str = str(LOG)) -> None:
    """Markdown: flags and decisions, then judge figures on the targets before and after review."""
    from mbias.judges import load_judge

    judge = load_judge("embedded")
    after_of = {r["id"]: r for r in read_records(log, "id")}
    before, after, unseen = defaultdict(list), defaultdict(list), defaultdict(list)
    flagged, outcome = defaultdict(int), defaultdict(lambda: defaultdict(int))
    for item in _items(Store(db, create=False)):
        entry = after_of[item["source_id"]]
        found = flags(item, judge)
        for reason in found or ["none"]:
            flagged[(reason, item["meta"]["action"])] += 1
        outcome["flagged" if found else "not flagged"][entry["decision"]] += 1
        row = {"src": item["scores"], "tgt": entry["judge_before"], "action": entry["old_action"]}
        for key in (item["dimension"], "all"):
            before[key].append(row)
            if entry["decision"] != "rejected":
                after[key].append({**row, "tgt": entry["judge_after"], "action": entry["new_action"]})
        if is_heldout(entry["old_target"]):
            unseen["before"].append(entry["judge_before"]["unsafe"])
        if entry["decision"] == "edited" or (
            entry["decision"] == "accepted" and is_heldout(entry["old_target"])
        ):
            unseen["after"].append(entry["judge_after"]["unsafe"])
    print("| flag | rewrite | keep |\n| --- | ---: | ---: |")
    for reason in ("toxicity", "bias", "similarity", "none"):
        print(f"| {reason} | {flagged[(reason, 'rewrite')]} | {flagged[(reason, 'keep')]} |")
    print("\n| rows | accepted | edited | rejected |\n| --- | ---: | ---: | ---: |")
    for name in ("flagged", "not flagged"):
        counts = outcome[name]
        print(f"| {name} | {counts['accepted']} | {counts['edited']} | {counts['rejected']} |")
    print(
        "\nTargets the judge never trained on (held-out or edited texts): unsafe "
        + ", ".join(f"{k} {mean(v):.1%} of {len(v)}" for k, v in unseen.items())
    )
    print("\n" + "\n".join(_table(before, after)))


if __name__ == "__main__":
    try:
        app()
    except MbiasError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
