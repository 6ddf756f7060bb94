"""`mbias debias`: rewrite a text, stdin lines, or a whole file (written as it goes, resumable)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from mbias import config
from mbias.commands.common import (
    Candidates,
    Escalate,
    Retries,
    ScreenMargin,
    console,
    default_output,
    gather_inputs,
    progress_bar,
    rate_text,
)
from mbias.commands.explain import explain_record
from mbias.errors import MbiasError
from mbias.intervene import GRANULARITIES, Debiaser, DebiasSettings
from mbias.profile import stage
from mbias.records import RecordWriter

SHOWN_FIELDS = (
    "id",
    "text",
    "rewrite",
    "action",
    "reason",
    "toxicity",
    "bias",
    "similarity",
    "escalated",
    "spans",
)


def debias(
    text: Annotated[
        str | None, typer.Argument(help="Text to rewrite, or '-' for one text per stdin line.")
    ] = None,
    input: Annotated[
        str | None, typer.Option("--input", "-i", help="CSV, TSV, JSONL or Parquet file.")
    ] = None,
    output: Annotated[
        str | None, typer.Option("--output", "-o", help="Where to write (default: INPUT.debiased.EXT).")
    ] = None,
    column: Annotated[
        str | None, typer.Option("--column", "-c", help="Text column (default: text or biased_text).")
    ] = None,
    engine: Annotated[
        str, typer.Option(help="Short name or spec: mbias-270m, mbias-7b, hf:..., openai:URL#MODEL.")
    ] = "",
    judge: Annotated[
        str,
        typer.Option(
            help="'embedded', 'embedded:PATH' (trained heads), 'llm:SPEC', 'embedded+llm:SPEC', 'none', "
            "or '' for the default."
        ),
    ] = "",
    prompt_style: Annotated[str | None, typer.Option(help="Override the model's prompt style.")] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 160,
    max_input_tokens: Annotated[int, typer.Option(min=1)] = 2048,
    candidates: Candidates = DebiasSettings.candidates,
    temperature: Annotated[float, typer.Option(min=0.0)] = 0.0,
    retries: Retries = DebiasSettings.retries,
    escalate: Escalate = None,
    screen: Annotated[bool, typer.Option(help="Skip generation for texts the judge finds clean.")] = True,
    screen_margin: ScreenMargin = DebiasSettings.screen_margin,
    granularity: Annotated[
        str, typer.Option(help="auto (per sentence), sentence, or text (the whole text as one unit).")
    ] = "auto",
    explain: Annotated[
        bool, typer.Option(help="Show each answer with its changed sentences highlighted and why.")
    ] = False,
    format: Annotated[str, typer.Option("--format", help="text or json (for TEXT and stdin).")] = "text",
    resume: Annotated[bool, typer.Option(help="Continue an interrupted --output file.")] = False,
    profile: Annotated[
        bool, typer.Option(help="At the end, print where the time went, stage by stage (to stderr).")
    ] = False,
    ray: Annotated[
        bool, typer.Option("--ray", help="Run on Ray: --input DIR|GLOB of shards, --output DIR of Parquet.")
    ] = False,
    ray_address: Annotated[
        str | None, typer.Option(help="--ray: the cluster to join (default: start a local Ray).")
    ] = None,
    workers: Annotated[
        int, typer.Option(min=1, help="--ray: Debiaser actors, each loads the model once.")
    ] = 1,
    cpus_per_worker: Annotated[float, typer.Option(min=0.0, help="--ray: CPUs each actor holds.")] = 1.0,
    gpus_per_worker: Annotated[float, typer.Option(min=0.0, help="--ray: GPUs per actor (vllm:).")] = 0.0,
) -> None:
    """Rewrite biased or toxic text into a safe version that keeps its main information.

    A text is screened sentence by sentence; only the sentences the judge flags are rewritten, and
    everything else (code, lists, clean sentences) comes back byte-identical.
    """
    if granularity not in GRANULARITIES:
        raise typer.BadParameter(f"choose one of {', '.join(GRANULARITIES)}", param_hint="--granularity")
    if explain and format == "json" and input is None:
        raise MbiasError(
            "--explain prints a table for people; for JSON leave it out (records carry the same spans)"
        )
    settings = DebiasSettings(
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        max_input_tokens=max_input_tokens,
        candidates=candidates,
        temperature=temperature,
        retries=retries,
        escalate=escalate,
        screen=screen,
        screen_margin=screen_margin,
        granularity=granularity,
    )
    engine_spec, judge_spec = engine or config.default_engine_spec(), config.default_judge(judge)
    if not ray and (ray_address or workers != 1 or cpus_per_worker != 1.0 or gpus_per_worker):
        raise MbiasError("--ray-address, --workers, --cpus-per-worker and --gpus-per-worker need --ray")
    if ray:
        if text is not None or input is None or output is None or explain:
            raise MbiasError("--ray takes --input DIR|GLOB and --output DIR (no TEXT, no --explain)")
        from mbias.scale.ray_job import RayJob, run_ray_job

        job = RayJob(
            input=input,
            output=output,
            engine=engine_spec,
            judge=judge_spec,
            prompt_style=prompt_style,
            settings=settings,
            column=column,
            resume=resume,
            address=ray_address,
            workers=workers,
            cpus_per_worker=cpus_per_worker,
            gpus_per_worker=gpus_per_worker,
        )
        run_ray_job(job)
        return
    started = time.perf_counter()
    with stage("read"):
        records = gather_inputs(text, input, column, format)
    debiaser = Debiaser(engine_spec, judge=judge_spec, prompt_style=prompt_style, settings=settings)
    if input is None:
        if len(records) == 1:  # a lone text with a unit too long for the model is an error
            for unit in debiaser.units(records[0]):
                debiaser.check_length(unit.text)
        for batch in debiaser.stream(records):
            for record in batch:
                if explain:
                    explain_record(record)
                elif format == "json":
                    shown = {k: record[k] for k in SHOWN_FIELDS if k in record}
                    typer.echo(json.dumps(shown, ensure_ascii=False))
                else:
                    typer.echo(record["rewrite"])
    else:
        destination = output or str(default_output(input, "debiased"))
        _debias_file(debiaser, records, destination, resume, explain, reads=[input])
    if profile:
        print_profile(time.perf_counter() - started)


def print_profile(wall: float) -> None:
    """Seconds per stage (exclusive: a stage's nested stages are not counted in it) and share of
    the command's time; what no stage covers is the command's own bookkeeping."""
    from rich.table import Table

    from mbias.profile import snapshot

    stages = sorted(snapshot().items(), key=lambda item: -item[1][0])
    table = Table(title=f"where {wall:.2f} s went (after imports)")
    for column in ("stage", "seconds", "share", "calls"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for name, (seconds, calls) in stages:
        table.add_row(name, f"{seconds:.3f}", f"{seconds / wall:.1%}", str(calls))
    other = wall - sum(seconds for seconds, _ in snapshot().values())
    table.add_row("other", f"{other:.3f}", f"{other / wall:.1%}", "")
    console.print(table)


def _debias_file(
    debiaser: Debiaser, records: list[dict], output: str, resume: bool, explain: bool, reads: list[str]
) -> None:
    counts: dict[str, int] = {}
    with RecordWriter(output, resume=resume, reads=reads) as writer:
        pending = writer.pending(records)
        if resume and writer.done_ids:
            console.print(f"resuming: {len(writer.done_ids)} rows already in {output}, {len(pending)} to go")
        start = time.perf_counter()
        with progress_bar("debias") as progress:
            task = progress.add_task("debias", total=len(pending), rate="")
            done = 0
            for batch in debiaser.stream(pending):
                with stage("write"):
                    for record in batch:
                        writer.write(record)
                        if explain and record.get("spans"):
                            explain_record(record)
                        counts[record["action"]] = counts.get(record["action"], 0) + 1
                done += len(batch)
                progress.update(task, advance=len(batch), rate=rate_text(done, time.perf_counter() - start))
    summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "nothing to do"
    console.print(f"wrote {Path(output)}: {summary}")


def register(app: typer.Typer) -> None:
    app.command("debias")(debias)
