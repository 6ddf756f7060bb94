"""`mbias train`: LoRA/QLoRA fine-tuning of a rewriter on biased -> debiased pairs (resumable)."""

from __future__ import annotations

from typing import Annotated

import typer

from mbias.commands.common import console


def train(
    data: Annotated[
        list[str],
        typer.Option(
            "--data", "-d", help="Pairs file/dir/hf:ID; PATH:N keeps N pairs, PATH:xW repeats it W times."
        ),
    ],
    output: Annotated[
        str, typer.Option("--output", "-o", help="Run directory: checkpoints, adapter, cards, logs.")
    ],
    base: Annotated[
        str | None, typer.Option(help="Base model spec (default: the preset's), e.g. hf:gguf:gemma-3-270m.")
    ] = None,
    preset: Annotated[
        str, typer.Option(help="paper (MBIAS hyper-parameters, QLoRA on CUDA) or cpu-small.")
    ] = "cpu-small",
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a setting: key=value (repeatable).")
    ] = None,
    map_: Annotated[
        str | None, typer.Option("--map", help="Column mapping for other layouts: src=COL,tgt=COL.")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint in --output.")] = False,
    method: Annotated[
        str | None, typer.Option(help="sft (default) or dpo (pairs with rejected_text, from mbias mine).")
    ] = None,
    init_adapter: Annotated[
        str | None, typer.Option(help="Continue this LoRA adapter dir instead of starting a new one.")
    ] = None,
) -> None:
    """Fine-tune a model to rewrite biased/toxic text (loss on the rewrite only); writes a LoRA adapter.

    With --method dpo it prefers each reviewed rewrite to the model's own failure on the same text."""
    from mbias.train.config import apply_overrides
    from mbias.train.config import preset as load_preset
    from mbias.train.data import parse_mapping
    from mbias.train.sft import train as run

    flags = {"base": base, "method": method, "init_adapter": init_adapter}
    given = [f"{key}={value}" for key, value in flags.items() if value]
    config = apply_overrides(load_preset(preset), (set_ or []) + given)
    summary = run(config, data, output, mapping=parse_mapping(map_), resume=resume)
    losses = ", ".join(
        f"{name} {summary[key]:.4f}"
        for name, key in (("train loss", "train_loss_last"), ("val loss", "val_loss"))
        if summary[key] is not None
    )
    console.print(
        f"wrote adapter to {output}: {summary['global_step']} steps, {losses}, "
        f"{summary['wall_time_s'] / 60:.1f} min"
    )


def register(app: typer.Typer) -> None:
    app.command("train")(train)
