"""Blind-read sheets: (input, candidate) rows from several systems, shuffled, systems hidden.

A person fills in ``unsafe`` (1: still biased or toxic by docs/ANNOTATION.md, 0: fair) on every row;
the key beside the sheet (``<sheet>.key.json``) says which systems wrote each row, so the tally can
un-blind it. Rows labelled in earlier sheets come pre-filled, so a new system only adds its own new
texts to read. benchmarks/human_read.py writes and tallies sheets; other benchmarks write theirs.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

# The system name of the people-written rewrites in a sheet.
REFERENCE = "reference"


def write_rows(
    rows: dict[tuple[str, str], list[str]],
    out: Path,
    *,
    split: str,
    n: int,
    seed: int,
    labels: list[str] = (),
) -> None:
    """The sheet (shuffled, systems hidden) and its key; rows labelled in ``labels`` come pre-filled."""
    known = read_labels(list(labels))
    order = list(rows)
    random.Random(seed + 1).shuffle(order)
    with out.open("w") as file:
        for text, candidate in order:
            before = known.get((text, candidate), {})
            row = {
                "text": text,
                "candidate": candidate,
                "unsafe": before.get("unsafe"),
                "meaning_kept": before.get("meaning_kept"),
            }
            file.write(json.dumps(row, ensure_ascii=False) + "\n")
    key = {"split": split, "n": n, "rows": [rows[k] for k in order]}
    Path(f"{out}.key.json").write_text(json.dumps(key, indent=1))
    todo = sum(1 for k in order if k not in known)
    print(f"wrote {len(order)} rows to {out} ({todo} to read, {len(order) - todo} labelled before)")


def read_labels(paths: list[str]) -> dict[tuple[str, str], dict]:
    """(text, candidate) -> the row, for every row of ``paths`` that carries a 0/1 ``unsafe``."""
    labels = {}
    for path in paths:
        for row in map(json.loads, Path(path).read_text().splitlines()):
            if row.get("unsafe") in (0, 1):
                labels[(row["text"], row["candidate"])] = row
    return labels


def held_out_reads(reads: Path) -> tuple[list[tuple[str, str]], dict[str, dict[tuple[str, str], int]]]:
    """The (text, candidate) rows both readers labelled in the blind sheets of held-out texts
    (``reads/*.jsonl`` and ``reads/reader2/*.jsonl``; the training-* folders are the readers'
    labels of training rewrites, never scored against), with each reader's ``unsafe`` label."""
    first = read_labels([str(p) for p in sorted(reads.glob("*.jsonl"))])
    second = read_labels([str(p) for p in sorted((reads / "reader2").glob("*.jsonl"))])
    rows = [key for key in first if key in second]
    return rows, {
        "reader 1": {k: first[k]["unsafe"] for k in rows},
        "reader 2": {k: second[k]["unsafe"] for k in rows},
    }
