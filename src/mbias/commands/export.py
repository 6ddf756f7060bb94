"""`mbias export`: reviewed annotations as a training file for `mbias train`, or (``--gguf``) a
LoRA adapter as a GGUF file for llama.cpp and Ollama."""

from __future__ import annotations

from typing import Annotated

import typer

from mbias.commands.common import console
from mbias.errors import MbiasError


def export(
    output: Annotated[
        str, typer.Option("--output", "-o", help="train.jsonl, .csv or .parquet (.gguf with --gguf).")
    ],
    db: Annotated[
        str | None, typer.Option(help="Annotation database: export its accepted and edited pairs.")
    ] = None,
    min_reviews: Annotated[int, typer.Option(min=1, help="Only items with at least K reviews.")] = 1,
    gguf: Annotated[
        bool, typer.Option("--gguf", help="Write a LoRA adapter as a GGUF file for llama.cpp / Ollama.")
    ] = False,
    adapter: Annotated[
        str | None, typer.Option(help="PEFT adapter directory for --gguf (default: the shipped one).")
    ] = None,
) -> None:
    """Write what reviewers kept as `biased_text` -> `debiased_text` pairs with their provenance."""
    if gguf and db is not None:
        raise MbiasError("give either --db (annotations) or --gguf (adapter), not both")
    if gguf:
        _export_gguf(adapter, output)
        return
    if db is not None:
        _export_annotations(db, output, min_reviews)
        return
    raise MbiasError("nothing to export from: give --db ANNOTATIONS.db or --gguf")


def _export_gguf(adapter: str | None, output: str) -> None:
    from mbias.config import DEFAULT_ADAPTER
    from mbias.engines.gguf_export import lora_to_gguf
    from mbias.engines.packaged import adapter_base_gguf

    if not output.endswith(".gguf"):
        raise MbiasError(f"--gguf writes a .gguf file; got --output {output!r}")
    if adapter is None and not (DEFAULT_ADAPTER / "adapter_config.json").exists():
        raise MbiasError("no adapter ships with this install yet; give --adapter DIR")
    base = adapter_base_gguf(adapter or DEFAULT_ADAPTER)
    lora_to_gguf(adapter or DEFAULT_ADAPTER, base, output)
    console.print(f"wrote {output}: a LoRA adapter for {base}")
    console.print(f"llama.cpp: llama-cli -m {base} --lora {output}")
    console.print(f"Ollama Modelfile: FROM {base} / ADAPTER {output}")


def _export_annotations(db: str, output: str, min_reviews: int) -> None:
    from mbias.annotate.export import export_pairs
    from mbias.annotate.store import Store
    from mbias.records import file_format

    file_format(output)  # an unsupported file type fails before any work
    written = export_pairs(Store(db, create=False), output, min_reviews)
    if not written:
        raise MbiasError(
            f"{db}: no accepted or edited item with at least {min_reviews} review(s); nothing written"
        )
    console.print(f"wrote {output}: {written} pairs")


def register(app: typer.Typer) -> None:
    app.command("export")(export)
