"""The one exception type users see: the CLI prints its message on one line and exits non-zero."""

from __future__ import annotations


class MbiasError(Exception):
    """A problem with the user's input or environment, explained in one line (no traceback)."""

    exit_code = 2
