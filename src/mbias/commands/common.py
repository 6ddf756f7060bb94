"""Pieces several commands share: progress display, input reading, output naming."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from mbias.errors import MbiasError
from mbias.records import Record, as_records, read_records

console = Console(stderr=True)

# debias, serve and probe take the same knob: samples drawn when no candidate passes the judge
Retries = Annotated[
    int, typer.Option(min=0, help="Sampled candidates when no rewrite passes the judge (0: none).")
]
# debias and serve: rewrites per flagged sentence, the best kept (mbias.intervene.DebiasSettings)
Candidates = Annotated[
    int,
    typer.Option(
        min=1,
        help="Rewrites per flagged sentence: the greedy one and N - 1 samples; the judge's reader "
        "heads keep the one a reader would most likely find safe and faithful.",
    ),
]
# debias and serve: how wide the screen's band of suspects is (mbias.intervene.DebiasSettings)
ScreenMargin = Annotated[
    float,
    typer.Option(
        min=0.0,
        max=1.0,
        help="A sentence under the bias threshold still goes to the model when its score is over this "
        "share of it (1.0: only flagged sentences: fewer clean ones touched, more biased ones missed).",
    ),
]

# debias, serve and probe: a second engine for what the first could not fix (mbias.intervene.DebiasSettings)
Escalate = Annotated[
    str | None,
    typer.Option(
        help="A second engine (e.g. mbias-1.5b) that rewrites again only the sentences the first left "
        "flagged; the judge keeps the better. Loaded on first use.",
    ),
]


@contextmanager
def progress_bar(description: str) -> Iterator[Progress]:
    """A progress bar on stderr with texts/s and time left (stdout stays clean for piping)."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        yield progress


def rate_text(done: int, elapsed: float | None) -> str:
    return f"{done / elapsed:.2f} texts/s" if elapsed else ""


def read_stdin_lines() -> list[str]:
    """One text per non-empty line of standard input, which must be UTF-8."""
    try:
        data = sys.stdin.buffer.read().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MbiasError(f"standard input is not UTF-8 (bad byte at position {exc.start})") from None
    lines = [line for line in data.splitlines() if line.strip()]
    if not lines:
        raise MbiasError("standard input is empty: give one text per line")
    return lines


def gather_inputs(text: str | None, input: str | None, column: str | None, format: str) -> list[Record]:
    """Records from exactly one of: a TEXT argument, '-' (stdin lines), or --input FILE."""
    if (text is None) == (input is None):
        raise MbiasError("give either a TEXT argument (or '-') or --input FILE")
    if format not in ("text", "json"):
        raise MbiasError(f"--format must be text or json, not {format!r}")
    if input is not None:
        return read_records(input, column)
    records = as_records(read_stdin_lines() if text == "-" else [text])
    if not records[0]["text"].strip():
        raise MbiasError("the text is empty")
    return records


def default_output(input_path: str, suffix: str) -> Path:
    path = Path(input_path)
    return path.with_name(f"{path.stem}.{suffix}{path.suffix if path.suffix else '.jsonl'}")


def require_free_port(host: str, port: int) -> None:
    """A one-line error now, before any model loads, when the server could not listen there
    (uvicorn would log several lines and exit later)."""
    import socket

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            probe.bind(address)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise MbiasError(f"cannot listen on {host}:{port} ({reason}); try another --port") from None
