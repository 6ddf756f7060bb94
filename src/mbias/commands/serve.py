"""`mbias serve`: the debias HTTP API, and a guard proxy in front of any OpenAI-compatible LLM."""

from __future__ import annotations

from typing import Annotated

import typer

from mbias import config
from mbias.commands.common import Candidates, Escalate, Retries, ScreenMargin, require_free_port
from mbias.errors import MbiasError
from mbias.intervene import DebiasSettings


def serve(
    engine: Annotated[str, typer.Option(help="Rewriter: short name or engine spec.")] = "",
    judge: Annotated[str, typer.Option(help="'embedded', 'llm:SPEC', 'none', or '' for the default.")] = "",
    upstream: Annotated[
        str | None, typer.Option(help="Guard mode: the LLM to protect, as openai:URL#MODEL.")
    ] = None,
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    token: Annotated[
        list[str] | None,
        typer.Option(help="Accept this bearer key (repeatable; also MBIAS_SERVE_TOKEN, comma-separated)."),
    ] = None,
    token_file: Annotated[
        str | None, typer.Option(help="Accept the bearer keys in this file, one per line (# comments).")
    ] = None,
    max_body_kb: Annotated[int, typer.Option(min=1, help="Larger request bodies get 413.")] = 1024,
    request_timeout: Annotated[
        float, typer.Option(min=0, help="Seconds a request may take, upstream included; then 504 (0: none).")
    ] = 60.0,
    max_batch: Annotated[int, typer.Option(min=1, help="Most texts merged into one model call.")] = 16,
    max_wait_ms: Annotated[float, typer.Option(min=0, help="How long a request waits for company.")] = 10.0,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 160,
    candidates: Candidates = DebiasSettings.candidates,
    retries: Retries = DebiasSettings.retries,
    escalate: Escalate = None,
    screen_margin: ScreenMargin = DebiasSettings.screen_margin,
    max_queue: Annotated[
        int,
        typer.Option(
            min=0, help="Texts allowed to wait; past it requests get 503 + Retry-After (0: no bound)."
        ),
    ] = 256,
    on_flagged: Annotated[
        str,
        typer.Option(help="Guard: a sentence no rewrite fixed -> rewrite (best candidate), block, or pass."),
    ] = "rewrite",
    block_message: Annotated[
        str | None, typer.Option(help="The answer sent instead under --on-flagged block.")
    ] = None,
) -> None:
    """Serve POST /v1/debias and, with --upstream, an OpenAI-compatible guarded /v1/chat/completions."""
    import uvicorn

    from mbias.engines import load_engine
    from mbias.intervene import Debiaser
    from mbias.serve.app import BLOCK_MESSAGE, POLICIES, create_app
    from mbias.serve.limits import api_keys

    if on_flagged not in POLICIES:
        raise MbiasError(f"--on-flagged must be one of {', '.join(POLICIES)}")
    require_free_port(host, port)
    keys = api_keys(token or (), token_file)

    guard = None
    if upstream:
        if not upstream.startswith("openai:"):
            raise MbiasError("--upstream must be an OpenAI-compatible server: openai:URL#MODEL")
        guard = load_engine(upstream)
    debiaser = Debiaser(
        engine or config.default_engine_spec(),
        judge=config.default_judge(judge),
        settings=DebiasSettings(
            batch_size=max_batch,
            max_new_tokens=max_new_tokens,
            candidates=candidates,
            retries=retries,
            escalate=escalate,
            screen_margin=screen_margin,
        ),
    )
    if escalate:  # now, so a second engine that cannot load is a one-line error, not a startup traceback
        debiaser.escalation_engine()
    app = create_app(
        debiaser,
        upstream=guard,
        keys=keys,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        max_queue=max_queue,
        on_flagged=on_flagged,
        block_message=block_message or BLOCK_MESSAGE,
        max_body_bytes=max_body_kb * 1024,
        request_timeout=request_timeout or None,
    )
    uvicorn.run(app, host=host, port=port, log_level="info")


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
