"""The review web app: reviewers work through items, accept, edit or reject candidates.

Every text on the page is hostile input (the dataset is made of slurs and stereotypes, and an LLM
wrote the candidates), so: jinja2 autoescaping everywhere, a Content-Security-Policy that runs no
inline script, a CSRF token tied to the signed session checked on every POST, cross-origin POSTs
refused, and an optional sign-in token. Each decision is its own committed transaction in the
store, with optimistic concurrency so two reviewers never silently overwrite each other.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader
from starlette.exceptions import HTTPException
from starlette.middleware.sessions import SessionMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.staticfiles import StaticFiles

from mbias.annotate.diff import word_diff
from mbias.annotate.stats import review_stats
from mbias.annotate.store import Conflict, Store
from mbias.errors import MbiasError

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
ACTIONS = {"accept": "accepted", "edit": "edited", "reject": "rejected"}
MAX_FORM_BYTES = 64 * 1024
SQLITE_MAX = 2**63 - 1  # the largest integer SQLite stores: ids and versions past it are no item
METRIC_ORDER = ("toxicity", "bias", "similarity")
_NAME = re.compile(r"^[^\x00-\x1f\x7f]{1,40}$")


def _fingerprint(secret: str, token: str | None) -> str:
    """What a session remembers of the sign-in token: restarting with another token signs everyone out."""
    return hmac.new(secret.encode(), (token or "").encode(), hashlib.sha256).hexdigest()[:32]


def _environment() -> Environment:
    env = Environment(loader=PackageLoader("mbias.annotate", "templates"), autoescape=True)
    env.filters["score"] = lambda value: f"{value:.2f}"
    env.filters["metrics"] = lambda scores: sorted(
        scores.items(),
        key=lambda kv: (METRIC_ORDER.index(kv[0]) if kv[0] in METRIC_ORDER else len(METRIC_ORDER), kv[0]),
    )
    env.filters["percent"] = lambda value: "–" if value is None else f"{100 * value:.0f} %"
    return env


def create_app(
    db: str | Path,
    token: str | None = None,
    reviews_needed: int = 1,
    allowed_hosts: list[str] | None = None,
) -> FastAPI:
    """The app for one database. ``token``: reviewers must give it at sign-in. ``reviews_needed``:
    how many different reviewers should see each item (2 or more measures agreement).
    ``allowed_hosts``: Host headers to answer (guards a loopback server against DNS rebinding)."""
    store = Store(db, create=False)
    store.require_writable()
    secret = store.secret()
    expected_auth = _fingerprint(secret, token)
    env = _environment()
    app = FastAPI(title="mbias review", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(
        SessionMiddleware, secret_key=secret, session_cookie="mbias_review", same_site="strict"
    )
    if allowed_hosts:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)
    app.mount("/static", StaticFiles(packages=[("mbias.annotate", "static")]), name="static")

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Response:
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "same-origin"
        if not request.url.path.startswith("/static/"):
            response.headers["Cache-Control"] = "no-store"
        return response

    def render(request: Request, template: str, status: int = 200, /, **context: Any) -> HTMLResponse:
        context.update(
            reviewer=request.session.get("reviewer"),
            csrf=request.session.setdefault("csrf", secrets.token_urlsafe(32)),
            flash=context.pop("flash", None) or request.session.pop("flash", None),
        )
        return HTMLResponse(env.get_template(template).render(**context), status_code=status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        if exc.status_code in (302, 303):
            return RedirectResponse(exc.headers["Location"], status_code=303)
        return render(request, "error.html", exc.status_code, status_code=exc.status_code, message=exc.detail)

    @app.exception_handler(MbiasError)
    async def store_failed(request: Request, exc: MbiasError) -> Response:  # locked, read-only, moved
        return render(request, "error.html", 503, status_code=503, message=f"The database failed: {exc}")

    def same_origin(request: Request) -> None:
        """Browsers send Origin (and Sec-Fetch-Site) on form posts: refuse any other site's."""
        origin = request.headers.get("origin")
        if origin is not None and origin != str(request.base_url).rstrip("/"):
            raise HTTPException(403, "cross-origin request refused")
        if request.headers.get("sec-fetch-site") == "cross-site":
            raise HTTPException(403, "cross-site request refused")

    async def form(request: Request) -> dict[str, str]:
        """The posted fields, after the origin and CSRF checks every POST goes through."""
        same_origin(request)
        declared = request.headers.get("content-length") or "0"
        if not declared.isdigit() or int(declared) > MAX_FORM_BYTES:
            raise HTTPException(413, f"form over {MAX_FORM_BYTES // 1024} KB: nothing was saved")
        body = b""
        if request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            async for chunk in request.stream():  # a chunked body has no Content-Length to trust
                body += chunk
                if len(body) > MAX_FORM_BYTES:  # refused whole: a cut edit must never be saved
                    raise HTTPException(413, f"form over {MAX_FORM_BYTES // 1024} KB: nothing was saved")
        fields = {
            k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).items()
        }
        expected = request.session.get("csrf")
        if not expected or not hmac.compare_digest(fields.get("csrf", "").encode(), expected.encode()):
            raise HTTPException(
                403, "missing or stale form token (CSRF check): reload the page and try again"
            )
        return fields

    def reviewer(request: Request) -> str:
        name = request.session.get("reviewer")
        if not name or not hmac.compare_digest(request.session.get("auth", ""), expected_auth):
            raise HTTPException(303, headers={"Location": "/login"})
        return name

    def progress(name: str) -> dict[str, int]:
        return store.progress(name, reviews_needed)

    def go_next(request: Request, name: str, after: int = 0) -> Response:
        item_id = store.next_item(name, reviews_needed, after)
        if item_id is None:
            return render(request, "done.html", progress=progress(name))
        return RedirectResponse(f"/item/{item_id}", status_code=303)

    @app.get("/login", response_class=HTMLResponse)
    def login_page(request: Request) -> Response:
        return render(request, "login.html", token_required=token is not None)

    @app.post("/login")
    def login(request: Request, fields: dict[str, str] = Depends(form)) -> Response:
        name = fields.get("name", "").strip()
        if not _NAME.match(name):
            return render(
                request,
                "login.html",
                400,
                token_required=token is not None,
                error="Give a name (1-40 characters).",
            )
        if token is not None and not hmac.compare_digest(fields.get("token", "").encode(), token.encode()):
            return render(
                request, "login.html", 403, token_required=True, error="Wrong review token.", name=name
            )
        request.session.clear()
        request.session.update(reviewer=name, auth=expected_auth, csrf=secrets.token_urlsafe(32))
        return RedirectResponse("/", status_code=303)

    @app.post("/logout")
    def logout(request: Request, fields: dict[str, str] = Depends(form)) -> Response:
        request.session.clear()
        return RedirectResponse("/login", status_code=303)

    @app.get("/")
    def home(request: Request, name: str = Depends(reviewer)) -> Response:
        return go_next(request, name)

    @app.get("/next")
    def next_item(request: Request, after: int = 0, name: str = Depends(reviewer)) -> Response:
        return go_next(request, name, min(max(after, 0), SQLITE_MAX))

    def item_page(
        request: Request,
        item_id: int,
        name: str,
        status: int = 200,
        draft: str | None = None,
        error: str = "",
    ) -> Response:
        """The item's page; ``draft`` fills the edit box (a decision that was not saved keeps the
        reviewer's text), else their own earlier edit, else the candidate they start from."""
        item = store.item(item_id) if 0 <= item_id <= SQLITE_MAX else None
        if item is None:
            raise HTTPException(404, f"no item {item_id}")
        for candidate in item["candidates"]:
            candidate["diff"] = word_diff(item["text"], candidate["text"])
        mine = next((r for r in item["reviews"] if r["reviewer"] == name), None)
        start = next(
            (c for c in item["candidates"] if c["chosen"]),
            item["candidates"][0] if item["candidates"] else None,
        )
        if draft is None and mine and mine["decision"] == "edited":
            draft = mine["final_text"]
        return render(
            request,
            "item.html",
            status,
            item=item,
            mine=mine,
            others=sum(r["reviewer"] != name for r in item["reviews"]),
            start=start,
            draft=draft,
            progress=progress(name),
            flash={"kind": "error", "text": error} if error else None,
        )

    @app.get("/item/{item_id}", response_class=HTMLResponse)
    def show_item(request: Request, item_id: int, name: str = Depends(reviewer)) -> Response:
        return item_page(request, item_id, name)

    @app.post("/item/{item_id}")
    def decide(
        request: Request, item_id: int, fields: dict[str, str] = Depends(form), name: str = Depends(reviewer)
    ) -> Response:
        decision = ACTIONS.get(fields.get("action", ""))
        try:
            version = int(fields.get("version", ""))
            candidate = int(fields["candidate"]) if fields.get("candidate") else None
        except ValueError:
            raise HTTPException(400, "malformed form: version and candidate must be numbers") from None
        if not all(0 <= n <= SQLITE_MAX for n in (item_id, version, candidate or 0)):
            raise HTTPException(400, "malformed form: a number out of range")
        if decision is None:
            raise HTTPException(400, "unknown action; use accept, edit or reject")
        draft = fields.get("text") if decision == "edited" else None
        try:
            saved = store.decide(
                item_id,
                name,
                decision,
                version,
                candidate_id=candidate,
                text=draft,
                reviews_needed=reviews_needed,
            )
        except Conflict as exc:  # the page again, as it is now, with the reviewer's text kept
            return item_page(request, item_id, name, 409, draft, str(exc))
        except MbiasError as exc:
            return item_page(request, item_id, name, 400, draft, f"Not saved: {exc}.")
        request.session["flash"] = {
            "kind": "ok",
            "text": f"Saved: item {item_id} {saved['decision']}.",
            "item": item_id,
        }
        return RedirectResponse(f"/next?after={item_id}", status_code=303)

    @app.get("/stats", response_class=HTMLResponse)
    def stats(request: Request, name: str = Depends(reviewer)) -> Response:
        return render(request, "stats.html", stats=review_stats(store), progress=progress(name))

    return app
