"""`mbias read-failures`: DPO pairs from a blind read of a model's rewrites (`mbias train --method dpo`).

`mbias mine` keeps only the failures no reader is needed for (copies, changes to texts that need
none, rewrites far less similar than the reviewed one). The commonest remaining failure is one
only a reader sees: the stereotype kept in softer words ("some X are ..."). This command hands the
rewrites that passed those checks to readers, blind, and turns the ones they mark still unsafe or
meaning-losing into rejected texts beside the reviewed target.

    mbias read-failures sheets MINED.jsonl --out-dir DIR --sheets 4 [--per-file 30] [--whole paradetox]
    # readers fill in "unsafe" and "meaning_kept" (0/1) on DIR/sheet-*.jsonl, then
    mbias read-failures pairs MINED.jsonl DIR/sheet-*.jsonl --out prefs.jsonl
    # a round that trains on some kinds of failure only, e.g. the reader-found unsafe rewrites
    mbias read-failures select prefs.jsonl --kind read-unsafe --out unsafe.jsonl
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer

from mbias.errors import MbiasError
from mbias.records import NoTextColumn, check_writable, read_records, read_rows, write_records
from mbias.train.mine import CHANGED, COPIED, LOOPED, LOST, READ_LOST, READ_UNSAFE, read_failures, readable

WHOLE = ("toxigen_",)  # by default the ToxiGen-style files are read in full; the others are sampled
KINDS = {
    "copied": COPIED,
    "changed": CHANGED,
    "lost": LOST,
    "looped": LOOPED,
    "read-unsafe": READ_UNSAFE,
    "read-lost": READ_LOST,
}

app = typer.Typer(
    add_completion=False, help="Blind sheets of a model's mined rewrites, and DPO pairs from readers' labels."
)


@app.command()
def sheets(
    mined: Path,
    out_dir: Annotated[Path, typer.Option()],
    sheets: Annotated[int, typer.Option(min=1)] = 4,
    per_file: Annotated[int, typer.Option(min=0, help="rewrites sampled from each other file")] = 30,
    whole: Annotated[
        list[str] | None,
        typer.Option(help="files whose name holds this are read in full (repeatable; default: toxigen_)"),
    ] = None,
    seed: int = 11,
) -> None:
    """Blind sheets (text, candidate, empty labels) of the rewrites only a reader can judge."""
    rows = [r for r in _mined_rows(mined) if readable(r)]
    rng = random.Random(seed)
    read_whole = {_source(r) for r in rows if _from_any(r, whole or WHOLE)}
    picks = [r for r in rows if _source(r) in read_whole]
    for source in sorted({_source(r) for r in rows} - read_whole):
        pool = [r for r in rows if _source(r) == source]
        picks += rng.sample(pool, min(per_file, len(pool)))
    rng.shuffle(picks)
    if not picks:
        raise MbiasError(
            f"{mined}: no rewrite only a reader can judge (each failed a check, or is the target)"
        )
    taken = sorted(out_dir.glob("sheet-*.jsonl")) if out_dir.is_dir() else []
    if taken:  # readers may have labelled them: never write over a sheet
        raise MbiasError(f"{taken[0]}: exists (it may hold readers' labels); choose another --out-dir")
    check_writable(out_dir)
    sheets = min(sheets, len(picks))  # dealt in turn: no sheet is left with nothing on it
    for i in range(sheets):
        chunk = picks[i::sheets]
        blank = [
            {"text": r["biased_text"], "candidate": r["model_output"], "unsafe": None, "meaning_kept": None}
            for r in chunk
        ]
        (out_dir / f"sheet-{i + 1}.jsonl").write_text(
            "".join(json.dumps(b, ensure_ascii=False) + "\n" for b in blank)
        )
    typer.echo(f"wrote {len(picks)} rewrites to {sheets} sheets in {out_dir}")


@app.command()
def pairs(mined: Path, labelled: list[Path], out: Annotated[Path, typer.Option()]) -> None:
    """Join the readers' labels with the mined rows: rejected_text = the rewrite a reader failed."""
    labels = {}
    for path in labelled:
        for row in read_rows(path):
            if not isinstance(row.get("text"), str) or not isinstance(row.get("candidate"), str):
                raise MbiasError(
                    f"{path}: a row has no text and candidate: pairs reads the sheets `sheets` wrote"
                )
            marks = {k: _label(row.get(k)) for k in ("unsafe", "meaning_kept")}
            if None in marks.values():
                raise MbiasError(f"{path}: a row has no 0/1 unsafe and meaning_kept yet")
            labels[(row["text"], row["candidate"])] = {**row, **marks}
    written, counts = read_failures(_mined_rows(mined), labels)
    if not written:
        raise MbiasError(f"no labelled rewrite matches a row of {mined}: were the sheets made from it?")
    write_records(out, written, reads=[mined, *labelled])
    typer.echo(f"wrote {out}: " + ", ".join(f"{n} {why}" for why, n in counts.most_common()))


@app.command()
def select(
    pairs: Path,
    kind: Annotated[list[str], typer.Option(help=f"failure kinds to keep: {', '.join(KINDS)}")],
    out: Annotated[Path, typer.Option()],
    source: Annotated[
        list[str] | None,
        typer.Option(help="keep only rows whose data_source holds one of these (e.g. paradetox)"),
    ] = None,
) -> None:
    """Only the rows whose failure is one of --kind (and, with --source, whose data file is one of
    those named): a preference round aimed at one failure class that leaves the others out."""
    unknown = sorted(set(kind) - set(KINDS))
    if unknown:
        raise MbiasError(f"unknown kind {', '.join(unknown)}; choose from {', '.join(KINDS)}")
    wanted = {KINDS[k] for k in kind}
    rows = read_rows(pairs)
    if not rows or "failure" not in rows[0]:
        raise MbiasError(f"{pairs}: no rows with a failure column: select reads what mine or pairs wrote")
    rows = [r for r in rows if r.get("failure") in wanted]
    if source:
        rows = [r for r in rows if _from_any(r, source)]
    write_records(out, rows, reads=[pairs])
    typer.echo(f"wrote {len(rows)} rows to {out}")


def _mined_rows(path: Path) -> list[dict]:
    """The rows `mbias mine` wrote, or one line saying what the file lacks."""
    try:
        rows = read_records(path, "biased_text")
    except NoTextColumn:
        rows = []
    missing = [k for k in ("biased_text", "debiased_text", "model_output") if not rows or k not in rows[0]]
    if missing:
        raise MbiasError(f"{path}: no {', '.join(missing)} column: this reads what `mbias mine` wrote")
    return rows


def _label(value: object) -> int | None:
    """A reader's 0/1, also as CSV reads it ("0", "1"); None when it is not filled in."""
    return {0: 0, 1: 1, "0": 0, "1": 1}.get(value) if not isinstance(value, bool) else int(value)


def _source(row: dict) -> str:
    return row.get("data_source") or ""


def _from_any(row: dict, names: Sequence[str]) -> bool:
    """Whether the row's data file is one of those named (a part of its path, e.g. "paradetox")."""
    return any(name in _source(row) for name in names)


def register(parent: typer.Typer) -> None:
    parent.add_typer(app, name="read-failures")
