"""`mbias review`: the web app where people accept, edit or reject the annotator's candidates."""

from __future__ import annotations

import ipaddress
import os
from typing import Annotated

import typer

from mbias.commands.common import console, require_free_port
from mbias.errors import MbiasError

TOKEN_ENV = "MBIAS_REVIEW_TOKEN"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def review(
    db: Annotated[
        str, typer.Option(help="Annotation database written by `mbias annotate`.")
    ] = "annotations.db",
    host: Annotated[str, typer.Option(help="Address to listen on (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8765,
    token: Annotated[
        str | None, typer.Option(help=f"Reviewers must give this token to sign in (or set {TOKEN_ENV}).")
    ] = None,
    reviews_per_item: Annotated[
        int, typer.Option(min=1, help="Different reviewers per item (2 measures agreement).")
    ] = 1,
) -> None:
    """Serve the review app: each reviewer signs in with a name and works through pending items."""
    import uvicorn

    from mbias.annotate.web import create_app

    token = token or os.environ.get(TOKEN_ENV) or None
    loopback = _is_loopback(host)
    if not loopback and token is None:
        raise MbiasError(f"listening on {host} exposes the texts to the network: set --token or {TOKEN_ENV}")
    allowed_hosts = ["127.0.0.1", "localhost", "[::1]", "::1", host] if loopback else None
    app = create_app(db, token=token, reviews_needed=reviews_per_item, allowed_hosts=allowed_hosts)
    shown = f"[{host}]" if ":" in host else host
    console.print(
        f"reviewing {db} at http://{shown}:{port}/ "
        + ("(sign-in token required)" if token else "(no token: anyone on this machine can sign in)")
    )
    require_free_port(host, port)
    uvicorn.run(app, host=host, port=port, log_level="warning")


def register(app: typer.Typer) -> None:
    app.command("review")(review)
