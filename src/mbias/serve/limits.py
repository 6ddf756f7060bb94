"""What a service in front of the public refuses early: oversized bodies (413), unknown keys (401),
and work that runs past its deadline (504)."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Awaitable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from mbias.errors import MbiasError

MAX_BODY_BYTES = 1 << 20  # 1 MiB: a long chat history, far beyond any single answer to debias

T = TypeVar("T")


class DeadlineExceeded(MbiasError):
    def __init__(self, seconds: float):
        super().__init__(f"mbias did not finish this request within {seconds:g} s")


class BodyLimit:
    """ASGI middleware: a declared Content-Length over the limit is refused before anything is read;
    a body without one (chunked) is read up to the limit and refused the moment it passes it. The
    app reads every body whole anyway, so holding one of at most the limit costs nothing extra."""

    def __init__(self, app: Any, max_bytes: int = MAX_BODY_BYTES):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await _too_large(send, self.max_bytes)
        if declared is not None:
            return await self.app(scope, receive, send)
        messages, size = [], 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                return await _too_large(send, self.max_bytes)
            if not message.get("more_body"):
                break

        async def replay() -> dict:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)


async def _too_large(send: Any, limit: int) -> None:
    body = f'{{"detail": "request body over {limit:,} bytes"}}'.encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def within(seconds: float | None, work: Awaitable[T]) -> T:
    """``work``'s result, or DeadlineExceeded once ``seconds`` have passed (None: no deadline)."""
    if not seconds:
        return await work
    try:
        return await asyncio.wait_for(work, seconds)
    except asyncio.TimeoutError:
        raise DeadlineExceeded(seconds) from None


def api_keys(given: Iterable[str] = (), key_file: str | None = None) -> frozenset[str]:
    """Every accepted bearer key: the ones given, MBIAS_SERVE_TOKEN (comma-separated), and a file
    with one key per line (blank lines and # comments skipped), so keys rotate without a restart
    of the clients that still hold the old one."""
    keys = {k.strip() for k in given}
    keys |= {k.strip() for k in os.environ.get("MBIAS_SERVE_TOKEN", "").split(",")}
    if key_file:
        try:
            lines = Path(key_file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise MbiasError(f"--token-file {key_file}: cannot read it ({type(exc).__name__})") from None
        in_file = {line.strip() for line in lines if not line.lstrip().startswith("#")} - {""}
        if not in_file:  # an empty key file would silently leave the service open or locked
            raise MbiasError(f"--token-file {key_file}: holds no key")
        keys |= in_file
    return frozenset(keys - {""})


def key_accepted(header: str, keys: frozenset[str]) -> bool:
    """Whether an Authorization header carries one of ``keys``, compared in constant time (every
    key is compared, so timing tells nothing about which one came close)."""
    given = header.removeprefix("Bearer ").strip().encode()
    return any([secrets.compare_digest(given, key.encode()) for key in keys])
