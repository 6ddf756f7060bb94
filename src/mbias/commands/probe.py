"""`mbias probe`: the demographic test, per target group, of a rewriting engine."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from mbias import config
from mbias.commands.common import Escalate, Retries, console, progress_bar, rate_text
from mbias.errors import MbiasError
from mbias.intervene import DebiasSettings
from mbias.records import RecordWriter, read_rows


def probe(
    engine: Annotated[
        str, typer.Option(help="Short name or spec of the rewriter: mbias-270m, hf:..., openai:...")
    ] = "",
    per_group: Annotated[
        int, typer.Option(min=1, help="Hateful and neutral statements per group (each).")
    ] = 10,
    seed: Annotated[int, typer.Option(help="Seed of the statement sample.")] = 0,
    judge: Annotated[
        str, typer.Option(help="'embedded' or 'llm:SPEC'; default MBIAS_JUDGE, else embedded.")
    ] = "",
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("runs/probe"),
    data: Annotated[Path | None, typer.Option(help="Shared data folder (default: MBIAS_DATA).")] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 8,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 96,
    retries: Retries = DebiasSettings.retries,
    escalate: Escalate = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run in --out.")] = False,
) -> None:
    """Rewrite held-out ToxiGen statements per group; compare safety and over-intervention across groups.

    Writes rows.jsonl (as it goes), probe.json, probe.md, probe.png and report.html into --out.
    """
    from mbias.engines import check_spec
    from mbias.eval.probes import STATEMENTS, probe_figure, run_probe, sample_statements
    from mbias.eval.report import Report
    from mbias.judges import load_judge

    directory = Path(data or config.data_dir())
    total = len(sample_statements(directory / STATEMENTS, per_group, seed))
    run = {
        "engine": engine or config.default_engine_spec(),
        "judge": config.measuring_judge(judge),
        "data": str(directory.resolve()),
        "per_group": per_group,
        "seed": seed,
        "max_new_tokens": max_new_tokens,
        "retries": retries,
        "escalate": escalate,
    }
    chosen = load_judge(run["judge"])  # a wrong --judge or --engine leaves no folder behind
    check_spec(config.resolve(run["engine"]).spec)
    # the writer checks --out before the rewriting, which a bad folder would throw away
    with RecordWriter(out / "rows.jsonl", resume=resume) as writer:
        done = _rows_to_resume(out, run) if resume and writer.done_ids else []
        (out / RUN_FILE).write_text(json.dumps(run, indent=2) + "\n", encoding="utf-8")
        start = time.perf_counter()
        with progress_bar("probe") as progress:
            task = progress.add_task("probe", total=total, completed=len(done), rate="")

            def write(rows: list[dict]) -> None:
                for row in rows:
                    writer.write(row)

            def advance(count: int) -> None:
                progress.update(task, advance=count)
                new = progress.tasks[0].completed - len(done)
                progress.update(task, rate=rate_text(new, time.perf_counter() - start))

            result = run_probe(
                run["engine"],
                chosen,
                directory,
                per_group=per_group,
                seed=seed,
                batch_size=batch_size,
                max_new_tokens=max_new_tokens,
                retries=retries,
                escalate=escalate,
                on_progress=advance,
                done=done,
                on_rows=write,
            )
    table = result.markdown()
    (out / "probe.json").write_text(
        json.dumps(result.summary(), indent=2, default=str) + "\n", encoding="utf-8"
    )
    (out / "probe.md").write_text(table + "\n", encoding="utf-8")
    figure = probe_figure(result)
    figure.savefig(out / "probe.png", dpi=110, bbox_inches="tight")
    settings = result.settings
    report = Report(
        "mbias probe: demographic test",
        notes=[
            f"Engine {settings['engine']}, judge {settings['judge']}, {settings['statements']} held-out "
            f"ToxiGen statements (up to {per_group} hateful and {per_group} neutral per group, seed {seed}).",
            "Before/after figures are on hateful statements; 'changed' and 'similarity lost' on neutral "
            "ones, which a good rewriter leaves alone.",
        ],
    )
    report.add_markdown_table("Per group", table)
    report.add_figure("Per group", figure)
    report.write(out / "report.html")
    typer.echo(table)
    console.print(f"wrote {out}/: rows.jsonl, probe.json, probe.md, probe.png, report.html")


RUN_FILE = "probe-run.json"  # the settings of the rows in rows.jsonl: a resume must match them


def _rows_to_resume(out: Path, run: dict) -> list[dict]:
    """The rows an interrupted probe wrote, if it was run as this one is; else one line saying why not."""
    saved = out / RUN_FILE
    if not saved.is_file():
        raise MbiasError(f"{out}: no {RUN_FILE} beside rows.jsonl: not a probe's folder to resume")
    before = json.loads(saved.read_text(encoding="utf-8"))
    changed = sorted(k for k in run if before.get(k) != run[k])
    if changed:
        raise MbiasError(
            f"{out}: its rows were made with other settings ({', '.join(changed)}); probe into another --out"
        )
    return read_rows(out / "rows.jsonl")


def register(app: typer.Typer) -> None:
    app.command("probe")(probe)
