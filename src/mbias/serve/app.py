"""The FastAPI app: `POST /v1/debias`, `POST /v1/score`, and `POST /v1/chat/completions` as a guard.

The guard speaks the OpenAI chat-completions protocol, so any OpenAI client can point its base URL
at mbias: the request goes to the upstream LLM unchanged, and each answer comes back with its
flagged sentences rewritten (with an ``mbias`` field saying what was done, span by span).
``on_flagged`` says what a guard does with a sentence no candidate fixed: keep the best rewrite
(``rewrite``), replace the whole answer with a block message (``block``), or let it through
(``pass``). Operations: ``/healthz``, ``/readyz`` (models loaded and the judge warm), ``/metrics``
(Prometheus), ``/v1/models``; a full queue answers 503 with Retry-After, a body over the limit
413, a request past its deadline 504, and an upstream failure 502 (unreachable, 5xx, an answer
without choices) or 504 (too slow), while the upstream's own 4xx reaches the client as it was; on
the guard each error also carries OpenAI's ``{"error": {...}}``. A choice without text (a tool call)
passes untouched; text that is not valid Unicode is refused from clients (400/422) and repaired
(U+FFFD) in upstream answers.
"""

from __future__ import annotations

import json
import time
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field, field_validator, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from mbias.engines.openai import OpenAIEngine
from mbias.errors import MbiasError, UpstreamError
from mbias.intervene import Debiaser
from mbias.judges import score_by_sentence
from mbias.records import lone_surrogate, repair_unicode
from mbias.serve.batcher import MicroBatcher, Overloaded
from mbias.serve.limits import (
    MAX_BODY_BYTES,
    BodyLimit,
    DeadlineExceeded,
    key_accepted,
    within,
)
from mbias.serve.metrics import Metrics
from mbias.serve.stream import guarded_stream

MAX_TEXTS = 256
MAX_CHARS = 20_000
POLICIES = ("rewrite", "block", "pass")
BLOCK_MESSAGE = "This answer was withheld because it contained biased or toxic content."


class DebiasRequest(BaseModel):
    text: str | None = Field(default=None, max_length=MAX_CHARS)
    texts: list[str] | None = Field(default=None, max_length=MAX_TEXTS)

    @field_validator("text", "texts")
    @classmethod
    def valid_unicode(cls, value: str | list[str] | None) -> str | list[str] | None:
        for text in [value] if isinstance(value, str) else value or []:
            at = lone_surrogate(text)
            if at is not None:
                raise ValueError(f"character {at} is a lone surrogate ({text[at]!a}): not valid Unicode")
        return value

    @model_validator(mode="after")
    def one_of(self) -> DebiasRequest:
        if (self.text is None) == (self.texts is None):
            raise ValueError("give exactly one of 'text' or 'texts'")
        if self.texts is not None and (not self.texts or any(len(t) > MAX_CHARS for t in self.texts)):
            raise ValueError(f"'texts' must hold 1-{MAX_TEXTS} texts of at most {MAX_CHARS} characters")
        return self


def create_app(
    debiaser: Debiaser,
    upstream: OpenAIEngine | None = None,
    keys: frozenset[str] = frozenset(),
    max_batch: int = 16,
    max_wait_ms: float = 10.0,
    max_queue: int = 0,
    on_flagged: str = "rewrite",
    block_message: str = BLOCK_MESSAGE,
    max_body_bytes: int = MAX_BODY_BYTES,
    request_timeout: float | None = 60.0,
) -> FastAPI:
    """The service; ``keys`` are the accepted bearer keys (none: open), ``request_timeout`` the
    seconds one request may take in mbias and upstream together (None: no deadline)."""
    if on_flagged not in POLICIES:
        raise MbiasError(f"on_flagged must be one of {', '.join(POLICIES)}, not {on_flagged!r}")
    metrics = Metrics()
    batcher = MicroBatcher(
        debiaser, max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue, on_batch=metrics.batch
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        from starlette.concurrency import run_in_threadpool

        await batcher.start()
        if debiaser.judge is not None:  # load the encoder now, not on the first request
            await run_in_threadpool(debiaser.judge.score, ["ready"])
        if debiaser.settings.escalate:  # and the second engine, so no request waits for it
            await run_in_threadpool(debiaser.escalation_engine)
        app.state.ready = True
        yield
        app.state.ready = False
        await batcher.stop()

    app = FastAPI(title="mbias", lifespan=lifespan)
    app.state.batcher = batcher
    app.state.ready = False
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.middleware("http")(metrics.middleware(lambda: batcher.pending))  # outermost: counts 413s

    def authorised(request: Request) -> None:
        if keys and not key_accepted(request.headers.get("authorization", ""), keys):
            raise HTTPException(status_code=401, detail="missing or wrong bearer token")

    async def debiased(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return await within(request_timeout, batcher.submit(records))

    @app.exception_handler(Overloaded)
    async def overloaded(request: Request, exc: Overloaded) -> JSONResponse:
        return _error(request, 503, str(exc), headers={"Retry-After": "1"})

    @app.exception_handler(DeadlineExceeded)
    async def too_slow(request: Request, exc: DeadlineExceeded) -> JSONResponse:
        return _error(request, 504, str(exc))

    @app.exception_handler(UpstreamError)
    async def upstream_failed(request: Request, exc: UpstreamError) -> JSONResponse:
        return _error(request, exc.status, str(exc))

    @app.exception_handler(MbiasError)
    async def cannot_serve(request: Request, exc: MbiasError) -> JSONResponse:
        return _error(request, 422, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def refused(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(request, exc.status_code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # what was wrong and where, without echoing the input: it may be megabytes, or text that
        # cannot be encoded as the response (a lone surrogate)
        errors = [{k: e[k] for k in ("loc", "msg", "type") if k in e} for e in exc.errors()]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.get("/healthz")
    @app.get("/health")
    def health() -> dict[str, Any]:
        """Alive: the process answers (it may still be loading)."""
        return {
            "status": "ok",
            "engine": debiaser.engine.name,
            "escalate": debiaser.settings.escalate,
            "guard": upstream is not None,
        }

    @app.get("/readyz")
    def ready() -> JSONResponse:
        """Ready: models loaded and the judge warm, so a request is served at full speed."""
        return JSONResponse({"ready": app.state.ready}, status_code=200 if app.state.ready else 503)

    @app.get("/metrics")
    def prometheus() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        served = [debiaser.engine.name] + ([upstream.model] if upstream is not None else [])
        return {"object": "list", "data": [{"id": m, "object": "model", "owned_by": "mbias"} for m in served]}

    @app.post("/v1/score", dependencies=[Depends(authorised)])
    async def score(body: DebiasRequest) -> dict[str, Any]:
        """The judges only: scores, the verdict and the harm category per text (no rewriting)."""
        judge = debiaser.judge
        if judge is None:
            raise HTTPException(
                status_code=404, detail="no judge loaded: start mbias serve with --judge embedded"
            )
        from starlette.concurrency import run_in_threadpool

        texts = [body.text] if body.text is not None else body.texts
        worst = await run_in_threadpool(score_by_sentence, judge, texts)  # as the rewrite path screens
        categories = await run_in_threadpool(judge.categorise, [sentence for _, sentence in worst])
        results = []
        for text, (scores, sentence), category in zip(texts, worst, categories):
            unsafe = judge.is_unsafe(scores)
            results.append(
                {"text": text, **scores, "unsafe": unsafe, "category": category if unsafe else None}
                | {"worst_sentence": sentence if sentence != text else None}
            )
        return {"results": results}

    @app.post("/v1/debias", dependencies=[Depends(authorised)])
    async def debias(body: DebiasRequest) -> dict[str, Any]:
        texts = [body.text] if body.text is not None else body.texts
        records = await debiased([{"id": str(i), "text": t} for i, t in enumerate(texts)])
        for record in records:
            metrics.spans(record.get("spans", []))
        return {"results": records}

    @app.post("/v1/chat/completions", dependencies=[Depends(authorised)])
    async def guard(request: Request) -> Any:
        if upstream is None:
            raise HTTPException(
                status_code=404, detail="no upstream LLM: start `mbias serve --upstream openai:URL#MODEL`"
            )
        try:
            payload = await request.json()
        except (ValueError, RecursionError):  # RecursionError: arrays nested thousands deep
            raise HTTPException(status_code=400, detail="the request body is not JSON") from None
        if not isinstance(payload, dict):
            raise HTTPException(status_code=400, detail="the request body must be a JSON object")
        try:  # what cannot be encoded cannot be forwarded: refuse it here, not as a 500 upstream
            json.dumps(payload, ensure_ascii=False).encode("utf-8")
        except (UnicodeEncodeError, RecursionError):
            raise HTTPException(
                status_code=400, detail="the request holds text that is not valid Unicode (a lone surrogate)"
            ) from None
        payload.setdefault("model", upstream.model)
        deadline = time.monotonic() + request_timeout if request_timeout else None
        from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

        if payload.get("stream"):
            if _choices_asked(payload) != 1:
                raise HTTPException(status_code=400, detail="the streaming guard serves n=1 only")

            async def check(text: str) -> dict[str, Any]:
                [record] = await debiased([{"id": "0", "text": text}])
                metrics.spans(record.get("spans", []))
                return record

            chunks = iterate_in_threadpool(upstream.stream_chat(payload))
            try:  # the upstream answers or fails before a byte leaves: its failure keeps its status
                first = await within(request_timeout, chunks.__anext__())
            except StopAsyncIteration:
                first = None

            async def answer_chunks():
                if first is not None:
                    yield first
                async for piece in chunks:
                    yield piece

            events = guarded_stream(
                answer_chunks(),
                check,
                lambda record: _apply_policy(record, on_flagged, block_message),
                on_flagged,
            )
            return StreamingResponse(events, media_type="text/event-stream")

        _choices_asked(payload)
        answer = await within(
            request_timeout,
            run_in_threadpool(upstream.request, "POST", "/chat/completions", payload, deadline=deadline),
        )
        answer = repair_unicode(answer)
        choices = answer.get("choices") if isinstance(answer, dict) else None
        if not isinstance(choices, list):
            raise UpstreamError(f"upstream {upstream.base_url} answered without a list of choices")
        # a choice without text (a tool call, an empty answer) has nothing to check: it passes as it is
        texts = [_answer_text(c, upstream.base_url) for c in choices]
        checked = [(c, t) for c, t in zip(choices, texts) if t]
        records = await debiased([{"id": str(i), "text": t} for i, (_, t) in enumerate(checked)])
        for (choice, _), record in zip(checked, records):
            choice["message"]["content"] = _apply_policy(record, on_flagged, block_message)
            choice["mbias"] = {k: record[k] for k in ("action", "reason", "spans") if k in record}
            choice["mbias"]["policy"] = on_flagged if record["action"] == "flagged" else None
            if record["action"] == "flagged" and on_flagged == "block":  # a blocked answer calls no tool
                choice["message"].pop("tool_calls", None)
                choice["message"].pop("function_call", None)
                choice["finish_reason"] = "content_filter"
            metrics.spans(record.get("spans", []))
        return answer

    return app


def _apply_policy(record: dict[str, Any], on_flagged: str, block_message: str) -> str:
    """The answer a guard returns: the spliced rewrite, unless a sentence stayed flagged and the
    policy says to block the answer or pass the upstream's text through."""
    if record["action"] != "flagged" or on_flagged == "rewrite":
        return record["rewrite"]
    return block_message if on_flagged == "block" else record["text"]


def _choices_asked(payload: dict[str, Any]) -> int:
    """The request's ``n``, checked: a client's wrong value is a 400, not a guard failure."""
    n = payload.get("n")
    if n is None:
        return 1
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise HTTPException(status_code=400, detail=f"'n' must be a positive integer, not {n!r}")
    return n


def _answer_text(choice: Any, upstream: str) -> str:
    """A non-streamed choice's text; "" when it holds none. Content in parts is refused (502):
    what the guard cannot read must not pass unchecked."""
    message = choice.get("message") if isinstance(choice, dict) else None
    content = message.get("content") if isinstance(message, dict) else None
    if content is not None and not isinstance(content, str):
        raise UpstreamError(f"upstream {upstream} answered content the guard cannot read (not a string)")
    return content or ""


def _error(
    request: Request, status: int, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """An error response: ``{"detail": ...}``, and on the guard also OpenAI's ``{"error": {...}}``,
    so OpenAI clients in front of it read the message as they read their provider's."""
    body: dict[str, Any] = {"detail": message}
    if request.url.path == "/v1/chat/completions":
        kind = "invalid_request_error" if status < 500 else "server_error"
        kind = "upstream_error" if status in (502, 504) else kind
        body["error"] = {"message": message, "type": kind, "code": status}
    return JSONResponse(body, status_code=status, headers=headers)
