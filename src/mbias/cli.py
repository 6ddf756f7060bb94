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


RESUMABLE = ("debias", "score", "mine", "probe")  # commands whose output a rerun continues
# typer >= 0.29 carries its own copy of click: its error classes are reached through a public one
_CLICK_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def main() -> None:
    """Entry point: user errors (and wrong options) become one line on stderr and a non-zero exit,
    never a traceback or a box; Ctrl-C says how to go on."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        code = app(standalone_mode=False)
    except MbiasError as exc:
        print(f"mbias: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except _CLICK_ERROR as exc:
        context = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError" and context is not None:
            print(context.get_help())  # a bare `mbias` or `mbias read-failures`: its help
            sys.exit(0)
        hint = f" (see {context.command_path} --help)" if context is not None else ""
        print(f"mbias: error: {exc.format_message()}{hint}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        code = 130
    if code == 130:  # typer answers Ctrl-C with exit code 130
        resumable = len(sys.argv) > 1 and sys.argv[1] in RESUMABLE
        more = ": rows already written are kept; rerun with --resume to go on" if resumable else ""
        print(f"mbias: interrupted{more}", file=sys.stderr)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
