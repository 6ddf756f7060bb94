"""`mbias context-pairs`: training pairs with neighbouring sentences, so an adapter learns the prompt a
sentence of an answer gets.

The Debiaser rewrites one sentence of an LLM answer at a time and shows the model the sentences
before and after it (``Before:`` / ``After:`` lines, mbias.prompts). An adapter trained on lone
sentences never saw those lines; this gives a share of the pairs neighbours drawn from fair,
everyday prose (data/judge/negatives.jsonl: the plain-prose and fair-advice kinds), so one training
file holds both prompt shapes. The rewrite target is unchanged: only the sentence is rewritten,
never its neighbours.

    mbias context-pairs --share 0.5 -o runs/context-pairs.jsonl
    mbias context-pairs --pairs data/preferences/mined-v5.jsonl \
        --pairs data/preferences/mined-dpo-round1.jsonl -o runs/context-prefs.jsonl   # for DPO
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Annotated

import typer

from mbias.commands.common import console
from mbias.errors import MbiasError
from mbias.records import read_rows, write_records

REPO_ROOT = Path(__file__).resolve().parents[3]
NEIGHBOUR_KINDS = ("plain-prose", "fair-advice")


def neighbours(path: Path) -> list[str]:
    if not path.is_file():
        raise MbiasError(f"{path}: no such file; pass --sentences (JSONL with text and kind)")
    pool = [r["text"] for r in read_rows(path) if r.get("kind") in NEIGHBOUR_KINDS and r.get("text")]
    if not pool:
        raise MbiasError(f"{path}: no sentences of kind {' or '.join(NEIGHBOUR_KINDS)}")
    return pool


def with_context(rows: list[dict], pool: list[str], share: float, seed: int) -> list[dict]:
    """Each row, and for ``share`` of them the same pair with one sentence before, after, or both."""
    rng = random.Random(seed)
    out = []
    for row in rows:
        if rng.random() < share:
            side = rng.choice(("before", "after", "both"))
            row = {
                **row,
                "context_before": rng.choice(pool) if side in ("before", "both") else "",
                "context_after": rng.choice(pool) if side in ("after", "both") else "",
            }
        out.append(row)
    return out


def context_pairs(
    output: Annotated[Path, typer.Option("--output", "-o", help="JSONL to write.")],
    pairs: Annotated[
        list[Path] | None, typer.Option(help="Pair files or folders of *.jsonl (default: data/bias).")
    ] = None,
    sentences: Annotated[
        Path, typer.Option(help="Neighbour sentences: JSONL with text and kind.")
    ] = REPO_ROOT / "data" / "judge" / "negatives.jsonl",
    share: Annotated[float, typer.Option(min=0.0, max=1.0, help="Share of pairs given neighbours.")] = 0.5,
    seed: int = 0,
) -> None:
    """Give a share of training pairs neighbouring sentences (context_before / context_after)."""
    rows, files_read = [], []
    for given in pairs or [REPO_ROOT / "data" / "bias"]:
        files = sorted(given.glob("*.jsonl")) if given.is_dir() else [given]
        if not files or not all(f.is_file() for f in files):
            raise MbiasError(f"{given}: no pair files (*.jsonl) there")
        for path in files:
            if path.resolve() in {f.resolve() for f in files_read}:
                continue  # a file named twice (itself and its folder) gives its pairs once
            files_read.append(path)
            found = read_rows(path)
            if not found or any(not r.get("biased_text") or "debiased_text" not in r for r in found):
                raise MbiasError(f"{path}: every row needs biased_text and debiased_text (training pairs)")
            rows += found
    made = with_context(rows, neighbours(sentences), share, seed)
    # files mined in different rounds reuse ids: number the rows, keep where each came from
    made = [{**row, "id": f"ctx-{i:05d}", "source_id": row.get("id")} for i, row in enumerate(made)]
    write_records(output, made, reads=[sentences, *files_read])
    with_neighbours = sum("context_before" in r for r in made)
    console.print(f"wrote {len(made)} pairs to {output}, {with_neighbours} with neighbours")


def register(app: typer.Typer) -> None:
    app.command("context-pairs")(context_pairs)
