"""OpenAI-compatible HTTP backend: vLLM, Ollama, llama.cpp server, OpenAI itself.

Requests run concurrently (a thread pool; the server batches), each with a timeout and retries
with exponential backoff on connection errors, 429 and 5xx. The API key comes from the
environment (MBIAS_API_KEY, else OPENAI_API_KEY), never from the spec string.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from mbias.errors import MbiasError, UpstreamError
from mbias.prompts import STOP_STRINGS

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
MIN_TRY_SECONDS = 0.5  # a try with less time left than this before a deadline is not started


def _unreachable(url: str, exc: httpx.HTTPError) -> UpstreamError:
    """No answer: 504 when the server was too slow, 502 when it could not be reached at all."""
    slow = isinstance(exc, httpx.TimeoutException)
    what = "did not answer in time" if slow else "cannot be reached"
    return UpstreamError(f"upstream {url} {what}: {type(exc).__name__}: {exc}", 504 if slow else 502)


def _refused(url: str, response: httpx.Response) -> UpstreamError:
    """An error answer: the server's own 4xx is the client's to see; its 5xx is a bad gateway."""
    status = response.status_code if 400 <= response.status_code < 500 else 502
    message = f"upstream {url} answered HTTP {response.status_code}: {response.text[:200]}"
    return UpstreamError(message, status)


class OpenAIEngine:
    """Chat-completions client; each prompt is sent as one user message."""

    tokenizer = None
    context_window = None

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        *,
        timeout: float = 60.0,
        retries: int = 3,
        concurrency: int = 8,
        backoff: float = 0.5,
        **_: Any,
    ):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.concurrency = concurrency
        key = os.environ.get("MBIAS_API_KEY") or os.environ.get("OPENAI_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.client = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)
        self.model = model or self._first_model()
        self.name = f"openai:{self.base_url}#{self.model}"

    @classmethod
    def from_spec(cls, rest: str, **options: Any) -> OpenAIEngine:
        base_url, _, model = rest.partition("#")
        if not base_url.startswith(("http://", "https://")):
            raise MbiasError(
                f"openai engine needs a URL, e.g. openai:http://127.0.0.1:8000/v1#MODEL (got {rest!r})"
            )
        return cls(base_url, model or None, **options)

    def request(
        self, method: str, path: str, payload: dict | None = None, deadline: float | None = None
    ) -> dict:
        """One API call with retries; the guard proxy forwards whole chat requests through it.
        ``deadline`` (time.monotonic()) bounds every try and the waits between them, so a client
        that was answered 504 leaves no retries running behind it."""
        error = UpstreamError(f"upstream {self.base_url}{path}: no time was left to ask it", 504)
        for attempt in range(self.retries + 1):
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left < MIN_TRY_SECONDS:  # too short for an answer: do not start
                break
            budget = self.timeout if left is None else min(left, self.timeout)
            try:
                response = self._read(method, path, payload, budget)
            except httpx.HTTPError as exc:
                error = _unreachable(f"{self.base_url}{path}", exc)
            else:
                if response.status_code < 400:
                    try:
                        return response.json()
                    except ValueError:
                        raise UpstreamError(f"{self.base_url}{path} answered with non-JSON content") from None
                error = _refused(f"{self.base_url}{path}", response)
                if response.status_code not in RETRY_STATUS:
                    break
            wait = self.backoff * 2**attempt
            late = deadline is not None and time.monotonic() + wait + MIN_TRY_SECONDS > deadline
            if attempt == self.retries or late:
                break
            time.sleep(wait)
        raise error

    def _read(self, method: str, path: str, payload: dict | None, budget: float) -> httpx.Response:
        """One try, answered whole within ``budget`` seconds. httpx's timeouts bound each read, so
        a server that trickles a byte at a time would hold the thread past any deadline; the body
        is read in pieces and the clock checked between them."""
        stop = time.monotonic() + budget
        with self.client.stream(method, path, json=payload, timeout=httpx.Timeout(budget)) as response:
            body = bytearray()
            for piece in response.iter_bytes():
                body += piece
                if time.monotonic() > stop:
                    raise httpx.ReadTimeout(f"the answer took over {budget:.1f} s to arrive")
        # iter_bytes decoded any gzip: only the media type (for the charset) carries over
        kind = {"content-type": response.headers.get("content-type", "application/json")}
        return httpx.Response(response.status_code, headers=kind, content=bytes(body))

    def stream_chat(self, payload: dict) -> Iterator[dict]:
        """A streamed chat completion: each Server-Sent Event's JSON chunk, until ``[DONE]``. A
        stream that ends with neither it nor a finish reason (some servers send no ``[DONE]``), or
        carries an error event, raises: a cut answer must not pass for a whole one."""
        path, url = "/chat/completions", f"{self.base_url}/chat/completions"
        finished = False
        try:
            with self.client.stream("POST", path, json={**payload, "stream": True}) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _refused(url, response)
                for line in response.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    try:
                        chunk = json.loads(data)
                    except ValueError:
                        raise UpstreamError(f"{url} streamed a non-JSON chunk") from None
                    if isinstance(chunk, dict) and chunk.get("error"):
                        error = chunk["error"]
                        message = error.get("message") if isinstance(error, dict) else error
                        raise UpstreamError(f"{url} streamed an error: {str(message)[:200]}")
                    choices = chunk.get("choices") if isinstance(chunk, dict) else None
                    finished = finished or any(
                        isinstance(c, dict) and c.get("finish_reason") for c in choices or []
                    )
                    yield chunk
        except httpx.HTTPError as exc:
            raise _unreachable(url, exc) from None
        if not finished:
            raise UpstreamError(f"{url} ended its stream with no finish reason nor [DONE]: it may be cut")

    def _first_model(self) -> str:
        models = self.request("GET", "/models").get("data") or []
        if not models:
            raise MbiasError(f"{self.base_url} lists no models; name one as openai:URL#MODEL")
        return models[0]["id"]

    def _complete(self, prompt: str, max_new_tokens: int, temperature: float, n: int) -> list[str]:
        payload = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_new_tokens,
            "temperature": temperature if (temperature > 0 or n == 1) else 0.7,
            "n": n,
            "stop": [s for s in STOP_STRINGS if s.strip()][:4],
        }
        choices = self.request("POST", "/chat/completions", payload).get("choices") or []
        texts = [(c.get("message") or {}).get("content") or "" for c in choices]
        return (texts + [""] * n)[:n]

    def generate(
        self, prompts: list[str], *, max_new_tokens: int = 128, temperature: float = 0.0, n: int = 1
    ) -> list[list[str]]:
        with ThreadPoolExecutor(max_workers=max(1, min(self.concurrency, len(prompts)))) as pool:
            return list(pool.map(lambda p: self._complete(p, max_new_tokens, temperature, n), prompts))
