"""`mbias annotate`: candidate rewrites from an engine (or existing pairs) into a review database."""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Annotated

import typer

from mbias import config
from mbias.commands.common import console, progress_bar, rate_text
from mbias.errors import MbiasError
from mbias.intervene import Debiaser, DebiasSettings
from mbias.records import read_records

DEFAULT_TEMPERATURE = 0.8  # sampling several candidates needs randomness, or they are all the same


def annotate(
    files: Annotated[
        list[str] | None, typer.Argument(help="Input files (same as --input; a shell glob works).")
    ] = None,
    input: Annotated[
        list[str] | None, typer.Option("--input", "-i", help="CSV, TSV, JSONL or Parquet file (repeatable).")
    ] = None,
    db: Annotated[
        str, typer.Option(help="SQLite annotation database (created if missing).")
    ] = "annotations.db",
    engine: Annotated[
        str, typer.Option(help="Short name or spec: mbias-270m, hf:..., openai:URL#MODEL.")
    ] = "",
    candidates: Annotated[int, typer.Option(min=1, max=9, help="Candidate rewrites per text.")] = 3,
    temperature: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            help=f"Sampling temperature (default {DEFAULT_TEMPERATURE} when --candidates > 1; "
            "0: the greedy rewrite and N - 1 samples).",
        ),
    ] = None,
    column: Annotated[
        str | None, typer.Option("--column", "-c", help="Text column (default: text or biased_text).")
    ] = None,
    judge: Annotated[
        str, typer.Option(help="'embedded', 'none', or '' for the default (embedded once its heads ship).")
    ] = "",
    import_pairs: Annotated[
        bool,
        typer.Option(
            "--import-pairs",
            help="Inputs are existing pairs: the target column becomes the one candidate; no engine runs.",
        ),
    ] = False,
    target_column: Annotated[
        str, typer.Option(help="With --import-pairs: the rewrite column.")
    ] = "debiased_text",
    batch_size: Annotated[int, typer.Option(min=1)] = 8,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 160,
) -> None:
    """Build a review queue: N candidate rewrites per text, scored by the judges, stored in SQLite.

    Texts already in the database are skipped, so re-running only adds what is new; each batch is
    committed as it finishes. Review with `mbias review`, then `mbias export` the training pairs.
    """
    from mbias.annotate.annotator import annotate_records
    from mbias.annotate.annotator import import_pairs as import_pair_records
    from mbias.annotate.store import Store

    sources = [*(input or []), *(files or [])]
    if not sources:
        raise MbiasError("give at least one input file (--input FILE)")
    if temperature is None:
        temperature = DEFAULT_TEMPERATURE if candidates > 1 else 0.0
    judge_spec = config.default_judge(judge)
    inputs = [
        (source, read_records(source, column or ("biased_text" if import_pairs else None)))
        for source in sources
    ]
    store = Store(db)
    if import_pairs:
        from mbias.judges import load_judge

        loaded = load_judge(judge_spec) if judge_spec else None
        run = partial(
            import_pair_records, store, target_column=target_column, judge=loaded, judge_name=judge_spec
        )
    else:
        debiaser = _debiaser(engine, judge_spec, candidates, temperature, batch_size, max_new_tokens)
        run = partial(annotate_records, store, debiaser=debiaser, judge_name=judge_spec)
    with progress_bar("annotate") as progress:
        for source, records in inputs:
            task = progress.add_task(Path(source).name, total=len(records), rate="")
            start, done = time.perf_counter(), 0

            def advance(count: int, task: int = task, start: float = start) -> None:
                nonlocal done
                done += count
                progress.update(task, advance=count, rate=rate_text(done, time.perf_counter() - start))

            summary = run(records, source_file=source, on_batch=advance)
            progress.update(task, completed=len(records))
            console.print(f"{source} -> {summary.line(db)}")


def _debiaser(
    engine: str, judge: str | None, candidates: int, temperature: float, batch_size: int, max_new_tokens: int
) -> Debiaser:
    """The project's one rewrite path, asked for N candidates per text, no screening and no retries
    (people review every candidate, so the judge does not get to pick)."""
    settings = DebiasSettings(
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        candidates=candidates,
        temperature=temperature,
        screen=False,
        retries=0,
    )
    return Debiaser(engine or config.default_engine_spec(), judge=judge, settings=settings)


def register(app: typer.Typer) -> None:
    app.command("annotate")(annotate)
