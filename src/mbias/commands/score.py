"""`mbias score`: toxicity and bias probabilities, and 0/1 labels, from the embedded judge."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from mbias.commands.common import console, default_output, gather_inputs, progress_bar, rate_text
from mbias.judges import score_by_sentence
from mbias.records import Record, RecordWriter

BATCH = 64


def score(
    text: Annotated[
        str | None, typer.Argument(help="Text to score, or '-' for one text per stdin line.")
    ] = None,
    input: Annotated[
        str | None, typer.Option("--input", "-i", help="CSV, TSV, JSONL or Parquet file.")
    ] = None,
    output: Annotated[
        str | None, typer.Option("--output", "-o", help="Where to write (default: INPUT.scored.EXT).")
    ] = None,
    column: Annotated[
        str | None, typer.Option("--column", "-c", help="Text column (default: text or biased_text).")
    ] = None,
    format: Annotated[str, typer.Option("--format", help="text or json (for TEXT and stdin).")] = "text",
    heads: Annotated[
        Path | None, typer.Option(help="Use these heads.json instead of the shipped ones.")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted --output file.")] = False,
) -> None:
    """Score texts for toxicity and bias with the offline embedded judge."""
    records = gather_inputs(text, input, column, format)

    from mbias.judges.embedded import EmbeddedJudge

    judge = EmbeddedJudge(heads)
    if input is None:
        for record in score_records(judge, records):
            typer.echo(json.dumps(record, ensure_ascii=False) if format == "json" else _line(record))
        return
    destination = output or str(default_output(input, "scored"))
    with RecordWriter(destination, resume=resume, reads=[input]) as writer:
        pending = writer.pending(records)
        start = time.perf_counter()
        with progress_bar("score") as progress:
            task = progress.add_task("score", total=len(pending), rate="")
            for offset in range(0, len(pending), BATCH):
                for record in score_records(judge, pending[offset : offset + BATCH]):
                    writer.write(record)
                done = min(offset + BATCH, len(pending))
                progress.update(task, completed=done, rate=rate_text(done, time.perf_counter() - start))
    console.print(f"wrote {destination}: {len(pending)} rows scored")


def score_records(judge: Any, records: list[Record]) -> list[Record]:
    """Each record plus ``toxicity``, ``bias`` and their 0/1 ``*_label``, read sentence by
    sentence as the rewrite path screens (each head's score is its highest over the sentences; the
    sentence furthest over a threshold is named in ``worst_sentence`` when the text has several);
    blank texts get an ``error``."""
    usable = [r for r in records if r["text"].strip()]
    scores = iter(score_by_sentence(judge, [r["text"] for r in usable]))
    scored = []
    for record in records:
        record = dict(record)
        if record["text"].strip():
            values, worst = next(scores)
            record.update({k: round(v, 4) for k, v in values.items()})
            record.update({f"{k}_label": v for k, v in judge.labels(values).items()})
            record["worst_sentence"] = worst if worst != record["text"] else None
            record["error"] = None
        else:
            record.update(
                {k: None for k in judge.thresholds}, **{f"{k}_label": None for k in judge.thresholds}
            )
            record["worst_sentence"] = None
            record["error"] = "empty text"
        scored.append(record)
    return scored


def _line(record: Record) -> str:
    words = {"toxicity": ("toxic", "not toxic"), "bias": ("biased", "not biased")}
    parts = []
    for head, (yes, no) in words.items():
        if head in record:
            parts.append(f"{head} {record[head]:.3f} ({yes if record[f'{head}_label'] else no})")
    if record.get("worst_sentence"):
        parts.append(f"worst sentence: {record['worst_sentence']!r}")
    return "  ".join(parts)


def register(app: typer.Typer) -> None:
    app.command("score")(score)
