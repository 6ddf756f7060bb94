"""`mbias probe`: the demographic test, per target group, of a rewriting engine."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from mbias import config
from mbias.commands.common import Escalate, Retries, console, progress_bar, rate_text
from mbias.intervene import DebiasSettings
from mbias.records import check_writable, write_records


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
) -> None:
    """Rewrite held-out ToxiGen statements per group; compare safety and over-intervention across groups.

    Writes rows.jsonl, probe.json, probe.md, probe.png and report.html into --out.
    """
    from mbias.eval.probes import STATEMENTS, probe_figure, run_probe, sample_statements
    from mbias.eval.report import Report
    from mbias.judges import load_judge

    directory = Path(data or config.data_dir())
    total = len(sample_statements(directory / STATEMENTS, per_group, seed))
    check_writable(out)  # before the rewriting, which a bad folder would throw away
    chosen = load_judge(config.measuring_judge(judge))
    start = time.perf_counter()
    with progress_bar("probe") as progress:
        task = progress.add_task("probe", total=total, rate="")
        done = 0

        def advance(count: int) -> None:
            nonlocal done
            done += count
            progress.update(task, advance=count, rate=rate_text(done, time.perf_counter() - start))

        result = run_probe(
            engine or config.default_engine_spec(),
            chosen,
            directory,
            per_group=per_group,
            seed=seed,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            retries=retries,
            escalate=escalate,
            on_progress=advance,
        )
    out.mkdir(parents=True, exist_ok=True)
    table = result.markdown()
    write_records(out / "rows.jsonl", result.rows)
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


def register(app: typer.Typer) -> None:
    app.command("probe")(probe)
