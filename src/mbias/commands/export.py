"""`mbias export`: reviewed annotations as a training file for `mbias train`."""

from __future__ import annotations

from typing import Annotated

import typer

from mbias.commands.common import console
from mbias.errors import MbiasError


def export(
    output: Annotated[str, typer.Option("--output", "-o", help="train.jsonl, .csv or .parquet.")],
    db: Annotated[
        str | None, typer.Option(help="Annotation database: export its accepted and edited pairs.")
    ] = None,
    min_reviews: Annotated[int, typer.Option(min=1, help="Only items with at least K reviews.")] = 1,
) -> None:
    """Write what reviewers kept as `biased_text` -> `debiased_text` pairs with their provenance."""
    if db is not None:
        _export_annotations(db, output, min_reviews)
        return
    raise MbiasError("nothing to export from: give --db ANNOTATIONS.db")


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
