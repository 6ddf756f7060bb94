"""The command-line app: one thin command per module in :mod:`mbias.commands`."""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys

import typer

import mbias.commands
from mbias.errors import MbiasError

app = typer.Typer(
    name="mbias",
    help="Make LLM output safe without losing its meaning (MBIAS: rewrite, train, judge, annotate).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """Make LLM output safe without losing its meaning (MBIAS: rewrite, train, judge, annotate)."""


for _module in pkgutil.iter_modules(mbias.commands.__path__):
    # each command module registers itself, so adding a command never edits this file
    _command = importlib.import_module(f"mbias.commands.{_module.name}")
    if hasattr(_command, "register"):
        _command.register(app)


def main() -> None:
    """Entry point: user errors become one line on stderr and a non-zero exit, never a traceback."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        app()
    except MbiasError as exc:
        print(f"mbias: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
