"""`mbias eval`: score a file of rewrites (or the paper's published outputs) and write a report."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from mbias import config
from mbias.commands.common import console, progress_bar, rate_text
from mbias.errors import MbiasError
from mbias.records import check_writable, pick_column, read_records, write_records

# Tried in order when no column is named: the paper's pair columns, then `mbias debias` output.
SOURCE_GUESSES = ("biased_text", "text")
OUTPUT_GUESSES = ("debiased_text", "rewrite")


def _column(
    rows: list[dict[str, Any]], given: str | None, guesses: tuple[str, ...], option: str, path: str
) -> str:
    return pick_column((k for r in rows for k in r), given, path, guesses, option)


@contextmanager
def _progress(total: int) -> Iterator[Callable[[int], None]]:
    start = time.perf_counter()
    done = 0
    with progress_bar("eval") as progress:
        task = progress.add_task("eval", total=total, rate="")

        def advance(count: int) -> None:
            nonlocal done
            done += count
            progress.update(task, advance=count, rate=rate_text(done, time.perf_counter() - start))

        yield advance


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")


def eval_command(
    input: Annotated[
        str | None, typer.Option("--input", "-i", help="Results file: CSV, TSV, JSONL or Parquet.")
    ] = None,
    source_column: Annotated[
        str | None, typer.Option(help="Original texts (default: biased_text, else text).")
    ] = None,
    output_column: Annotated[
        str | None, typer.Option(help="Rewrites (default: debiased_text, else rewrite).")
    ] = None,
    group_column: Annotated[str | None, typer.Option(help="Break the figures down by this column.")] = None,
    judge: Annotated[
        str, typer.Option(help="'embedded' or 'llm:SPEC' (DeepEval-style LLM judge); default MBIAS_JUDGE.")
    ] = "",
    out: Annotated[
        Path | None, typer.Option(help="Output folder (default: INPUT.eval/, or runs/paper-eval).")
    ] = None,
    paper: Annotated[
        bool, typer.Option("--paper", help="Re-score the MBIAS paper's published outputs.")
    ] = False,
    data: Annotated[
        Path | None, typer.Option(help="Shared data folder (for --paper; default: MBIAS_DATA).")
    ] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N rows (quick checks).")] = None,
) -> None:
    """Measure bias, toxicity and meaning kept, before and after; empty or refused outputs count as failures.

    Writes rows.jsonl (per-row scores), summary.json, table.md and report.html into --out.
    """
    if paper == (input is not None):
        raise MbiasError("give either --input FILE or --paper")
    from mbias.judges import load_judge

    if paper:
        _paper(
            load_judge(config.measuring_judge(judge)),
            Path(data or config.data_dir()),
            out or Path("runs/paper-eval"),
            limit,
        )
        return
    try:
        rows = read_records(input, source_column)  # type: ignore[arg-type]
    except MbiasError as exc:  # read_records names its own option; this command calls it --source-column
        raise MbiasError(str(exc).replace("--column", "--source-column")) from None
    rows = rows[:limit] if limit else rows
    source = _column(rows, source_column, SOURCE_GUESSES, "--source-column", input)  # type: ignore[arg-type]
    output = _column(rows, output_column, OUTPUT_GUESSES, "--output-column", input)  # type: ignore[arg-type]
    if group_column:
        _column(rows, group_column, (), "--group-column", input)  # type: ignore[arg-type]
    directory = out or Path(str(Path(input).with_suffix("")) + ".eval")  # type: ignore[arg-type]
    chosen = load_judge(config.measuring_judge(judge))  # a wrong --judge leaves no empty folder behind
    check_writable(directory)  # before the scoring, which a bad folder would throw away
    from mbias.eval.metrics import evaluate, paper_table
    from mbias.eval.report import evaluation_report

    with _progress(len(rows)) as advance:
        evaluation = evaluate(rows, chosen, source, output, group_column, on_progress=advance)
    table = paper_table([(output, evaluation.summary)])
    write_records(directory / "rows.jsonl", evaluation.rows, reads=[input])
    _write_json(directory / "summary.json", evaluation.summary)
    (directory / "table.md").write_text(table + "\n", encoding="utf-8")
    notes = [
        f"Input: {input} ({len(rows)} rows); judge: {evaluation.summary['judge']}.",
        *_failure_notes(evaluation.summary),
    ]
    title = f"mbias eval: {Path(input).name}"  # type: ignore[arg-type]
    evaluation_report(title, [(output, evaluation)], [("Summary", table)], notes).write(
        directory / "report.html"
    )
    typer.echo(table)
    for note in _failure_notes(evaluation.summary):
        typer.echo(note)
    console.print(f"wrote {directory}/: rows.jsonl, summary.json, table.md, report.html")


def _failure_notes(summary: dict[str, Any]) -> list[str]:
    failed = summary["failed_outputs"]
    notes = [
        f"Failed outputs: {failed['empty']} empty, {failed['refusal']} refusals ({failed['pct']:.1f}%), "
        "scored as unsafe and as zero retention."
    ]
    if summary["judge_failures"]:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(summary["judge_failures"].items()))
        notes.append(f"Judge failures (rows left unscored, see errors in rows.jsonl): {counts}.")
    return notes


def _paper(judge: Any, data: Path, out: Path, limit: int | None) -> None:
    from mbias.eval.paper import rescore, total_rows
    from mbias.eval.report import evaluation_report

    total = total_rows(data, limit)  # missing data leaves no empty folder behind
    check_writable(out)
    with _progress(total) as advance:
        result = rescore(judge, data, limit=limit, on_progress=advance)
    markdown = result.markdown()
    write_records(
        out / "rows.jsonl", [{"system": s.name} | row for s in result.systems for row in s.evaluation.rows]
    )
    _write_json(out / "summary.json", result.summary())
    (out / "table.md").write_text(markdown + "\n", encoding="utf-8")
    systems = [(s.name, s.evaluation) for s in result.systems]
    evaluation_report("mbias eval --paper: the MBIAS test set re-scored", systems, result.tables()).write(
        out / "report.html"
    )
    typer.echo(markdown)
    console.print(f"wrote {out}/: rows.jsonl, summary.json, table.md, report.html")


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
