"""`mbias merge`: fold a LoRA adapter into its base weights, as a plain model directory."""

from __future__ import annotations

from typing import Annotated

import typer

from mbias.commands.common import console


def merge(
    base: Annotated[
        str, typer.Option(help="Base model spec the adapter was trained on, e.g. hf:gguf:gemma-3-270m.")
    ],
    adapter: Annotated[str, typer.Option(help="Adapter directory (adapter_config.json + weights).")],
    output: Annotated[
        str, typer.Option("--output", "-o", help="New model directory (must not exist or be empty).")
    ],
) -> None:
    """Merge an adapter into the base model; the result loads as hf:<output> with no PEFT."""
    from mbias.train.merge import merge_adapter

    path = merge_adapter(base, adapter, output)
    console.print(f"wrote merged model to {path} (engine spec hf:{path})")


def register(app: typer.Typer) -> None:
    app.command("merge")(merge)
