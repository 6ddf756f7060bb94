"""The FastAPI app: `POST /v1/debias`, and `POST /v1/chat/completions` as a guard proxy.

The guard speaks the OpenAI chat-completions protocol, so any OpenAI client can point its base URL
at mbias: the request goes to the upstream LLM unchanged, and each answer comes back rewritten when
the judges find it biased or toxic (with an ``mbias`` field saying what was done).
"""

from __future__ import annotations

import secrets
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, model_validator

from mbias.engines.openai import OpenAIEngine
from mbias.errors import MbiasError
from mbias.intervene import Debiaser
from mbias.serve.batcher import MicroBatcher

MAX_TEXTS = 256
MAX_CHARS = 20_000


class DebiasRequest(BaseModel):
    text: str | None = Field(default=None, max_length=MAX_CHARS)
    texts: list[str] | None = Field(default=None, max_length=MAX_TEXTS)

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
    token: str | None = None,
    max_batch: int = 16,
    max_wait_ms: float = 10.0,
) -> FastAPI:
    batcher = MicroBatcher(debiaser, max_batch=max_batch, max_wait_ms=max_wait_ms)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        await batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="mbias", lifespan=lifespan)
    app.state.batcher = batcher

    def authorised(request: Request) -> None:
        if token is None:
            return
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not secrets.compare_digest(given, token):
            raise HTTPException(status_code=401, detail="missing or wrong bearer token")

    @app.exception_handler(MbiasError)
    async def user_error(_: Request, exc: MbiasError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=502)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "engine": debiaser.engine.name, "guard": upstream is not None}

    @app.post("/v1/debias", dependencies=[Depends(authorised)])
    async def debias(body: DebiasRequest) -> dict[str, Any]:
        texts = [body.text] if body.text is not None else body.texts
        records = [{"id": str(i), "text": t} for i, t in enumerate(texts)]
        return {"results": await batcher.submit(records)}

    @app.post("/v1/chat/completions", dependencies=[Depends(authorised)])
    async def guard(request: Request) -> dict[str, Any]:
        if upstream is None:
            raise HTTPException(
                status_code=404, detail="no upstream LLM: start `mbias serve --upstream openai:URL#MODEL`"
            )
        payload = await request.json()
        if payload.get("stream"):
            raise HTTPException(
                status_code=400, detail="streaming is not supported by the guard; set stream=false"
            )
        payload.setdefault("model", upstream.model)
        from starlette.concurrency import run_in_threadpool

        answer = await run_in_threadpool(upstream.request, "POST", "/chat/completions", payload)
        choices = answer.get("choices") or []
        texts = [((c.get("message") or {}).get("content") or "") for c in choices]
        records = await batcher.submit([{"id": str(i), "text": t} for i, t in enumerate(texts)])
        for choice, record in zip(choices, records):
            choice["message"]["content"] = record["rewrite"]
            choice["mbias"] = {k: record[k] for k in ("action", "reason", "spans") if k in record}
        return answer

    return app
