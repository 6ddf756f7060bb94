"""The one exception type users see: the CLI prints its message on one line and exits non-zero."""

from __future__ import annotations


class MbiasError(Exception):
    """A problem with the user's input or environment, explained in one line (no traceback)."""

    exit_code = 2


class UpstreamError(MbiasError):
    """An OpenAI-compatible server failed a request: unreachable or 5xx (502), too slow (504), or it
    refused the request itself (its own 4xx, which the guard passes back to the client)."""

    def __init__(self, message: str, status: int = 502):
        super().__init__(message)
        self.status = status
