"""`mbias mine`: preference pairs from a rewriter's own failures, for `mbias train --method dpo`."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from mbias import config
from mbias.commands.common import console, progress_bar, rate_text


def mine(
    data: Annotated[
        list[str], typer.Option("--data", "-d", help="Reviewed pairs, as mbias train takes them.")
    ],
    output: Annotated[str, typer.Option("--output", "-o", help="JSONL/CSV/Parquet, written as it goes.")],
    engine: Annotated[str, typer.Option(help="The rewriter whose failures to collect.")] = "",
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 96,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted --output file.")] = False,
    meaning_margin: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="Also reject rewrites whose similarity to the text falls this far below the reviewed "
            "rewrite's (the embedded encoder); 0 turns the check off.",
        ),
    ] = 0.0,
) -> None:
    """Greedy-rewrite reviewed pairs; keep the model's copies of texts that need a rewrite, its
    changes to texts that need none and (with --meaning-margin) its rewrites that lose meaning the
    reviewed one keeps, as rejected_text beside the reviewed target."""
    from mbias.intervene import Debiaser, DebiasSettings
    from mbias.records import RecordWriter
    from mbias.train.config import apply_overrides, preset
    from mbias.train.data import files_named, load_training_data
    from mbias.train.mine import mine as run
    from mbias.train.mine import pair_records

    loader = apply_overrides(preset("cpu-small"), ["val_fraction=0"])  # every non-held-out pair
    records = pair_records(load_training_data(data, loader).train)
    # the output is checked (and refused when it is an input) before the model loads
    with RecordWriter(output, resume=resume, reads=files_named(data)) as writer:
        settings = DebiasSettings(
            batch_size=batch_size, max_new_tokens=max_new_tokens, screen=False, retries=0
        )
        debiaser = Debiaser(engine or config.default_engine_spec(), judge=None, settings=settings)
        similarity = None
        if meaning_margin > 0:
            from mbias.judges.embedded import EmbeddedJudge

            similarity = EmbeddedJudge().similarity
        todo = sum(r["id"] not in writer.done_ids for r in records)
        start = time.perf_counter()
        with progress_bar("mine") as progress:
            task = progress.add_task("mine", total=todo, rate="")

            def advance(count: int) -> None:
                done = progress.tasks[0].completed + count
                progress.update(task, advance=count, rate=rate_text(done, time.perf_counter() - start))

            counts = run(debiaser, records, writer, advance, similarity, meaning_margin)
    summary = ", ".join(f"{n} {why}" for why, n in counts.most_common()) or "nothing to do"
    console.print(f"wrote {output}: {summary}")


def register(app: typer.Typer) -> None:
    app.command("mine")(mine)
