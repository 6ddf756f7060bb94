"""The review web app in-process: sign-in and token, CSRF and origin checks, escaping of hostile
text, decisions, conflicts between reviewers, skipping and the stats page."""

from __future__ import annotations

import re

import pytest
from starlette.testclient import TestClient
from typer.testing import CliRunner

from mbias.annotate.store import NewCandidate, NewItem, Store
from mbias.annotate.web import create_app
from mbias.cli import app
from mbias.errors import MbiasError

SCRIPT = "<script>alert('owned')</script> people like them"


@pytest.fixture
def store(tmp_path) -> Store:
    store = Store(tmp_path / "a.db")
    items = [
        NewItem(SCRIPT, "test", candidates=[NewCandidate("<img src=x onerror=alert(1)> people", "test")]),
        NewItem(
            "Women are bad drivers.", "test", candidates=[NewCandidate("Drivers vary.", "test", chosen=True)]
        ),
        NewItem("Old folks can't learn.", "test", candidates=[]),
    ]
    store.add_items(items, actor="test")
    return store


def csrf_of(page: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', page).group(1)


def sign_in(client: TestClient, name: str, token: str = "") -> TestClient:
    page = client.get("/login").text
    response = client.post("/login", data={"csrf": csrf_of(page), "name": name, "token": token})
    assert response.status_code == 200, response.text
    return client


def client_for(store: Store, **options) -> TestClient:
    return TestClient(create_app(store.path, **options), base_url="http://testserver")


def test_pages_need_sign_in_and_the_token(store):
    client = client_for(store, token="s3cret")
    response = client.get("/item/1", follow_redirects=False)
    assert (response.status_code, response.headers["location"]) == (303, "/login")
    page = client.get("/login").text
    assert 'name="token"' in page
    wrong = client.post("/login", data={"csrf": csrf_of(page), "name": "eve", "token": "guess"})
    assert wrong.status_code == 403 and "Wrong review token" in wrong.text
    assert client.get("/item/1", follow_redirects=False).status_code == 303
    sign_in(client, "alice", "s3cret")
    assert client.get("/item/1").status_code == 200
    # a session from a server started with another token is not valid any more
    other = TestClient(
        create_app(store.path, token="rotated"), base_url="http://testserver", cookies=client.cookies
    )
    assert other.get("/item/1", follow_redirects=False).status_code == 303


def test_every_post_needs_the_session_csrf_token_and_our_origin(store):
    client = sign_in(client_for(store), "alice")
    page = client.get("/item/2").text
    form = {"action": "reject", "version": "0"}
    assert client.post("/item/2", data=form).status_code == 403
    assert client.post("/item/2", data={**form, "csrf": "forged"}).status_code == 403
    assert client.post("/item/2", data={**form, "csrf": "fälschung"}).status_code == 403
    other = sign_in(client_for(store), "bob")  # a token from another session is no good either
    assert (
        client.post("/item/2", data={**form, "csrf": csrf_of(other.get("/item/2").text)}).status_code == 403
    )
    cross = client.post(
        "/item/2", data={**form, "csrf": csrf_of(page)}, headers={"Origin": "http://evil.example"}
    )
    assert cross.status_code == 403
    site = client.post(
        "/item/2", data={**form, "csrf": csrf_of(page)}, headers={"Sec-Fetch-Site": "cross-site"}
    )
    assert site.status_code == 403
    assert store.item(2)["reviews"] == []
    ok = client.post("/item/2", data={**form, "csrf": csrf_of(page)}, headers={"Origin": "http://testserver"})
    assert ok.status_code == 200
    assert store.item(2)["status"] == "rejected"


def test_hostile_text_is_escaped_and_no_inline_script_may_run(store):
    client = sign_in(client_for(store), "alice")
    response = client.get("/item/1")
    assert "<script>alert" not in response.text and "<img src=x" not in response.text
    assert "&lt;script&gt;alert(&#39;owned&#39;)&lt;/script&gt;" in response.text
    assert "&lt;img src=x onerror=alert(1)&gt;" in response.text
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert "unsafe-inline" not in response.headers["content-security-policy"]


def test_accept_edit_reject_and_skip_walk_the_queue(store):
    client = sign_in(client_for(store), "alice")
    page = client.get("/").text  # the first pending item
    assert 'id="original">&lt;script&gt;' in page
    skipped = client.get("/next?after=1")
    assert skipped.url.path == "/item/2"
    page = skipped.text
    candidate = re.search(r'name="candidate" value="(\d+)"', page).group(1)
    response = client.post(
        "/item/2", data={"csrf": csrf_of(page), "action": "accept", "version": "0", "candidate": candidate}
    )
    assert response.url.path == "/item/3" and "Saved" in response.text
    page = response.text
    response = client.post(
        "/item/3",
        data={
            "csrf": csrf_of(page),
            "action": "edit",
            "version": "0",
            "candidate": "",
            "text": "People learn.",
        },
    )
    assert response.url.path == "/item/1"  # wrapped round to the skipped one
    client.post("/item/1", data={"csrf": csrf_of(response.text), "action": "reject", "version": "0"})
    done = client.get("/")
    assert "Nothing left" in done.text and "3 / 3 reviewed" in done.text
    assert [store.item(i)["status"] for i in (1, 2, 3)] == ["rejected", "accepted", "edited"]
    assert store.item(3)["reviews"][0]["final_text"] == "People learn."
    assert {r["reviewer"] for r in store.reviews()} == {"alice"}


def test_an_empty_edit_is_refused_with_a_message(store):
    client = sign_in(client_for(store), "alice")
    page = client.get("/item/3").text
    response = client.post(
        "/item/3", data={"csrf": csrf_of(page), "action": "edit", "version": "0", "text": "  "}
    )
    assert response.url.path == "/item/3" and "Not saved" in response.text
    assert store.item(3)["status"] == "pending"


def test_independent_reviews_do_not_conflict_but_one_past_the_needed_count_does(store):
    alice, bob, carol = (sign_in(client_for(store, reviews_needed=2), n) for n in ("alice", "bob", "carol"))
    pages = [c.get("/item/2").text for c in (alice, bob, carol)]  # all three load version 0
    candidate = re.search(r'name="candidate" value="(\d+)"', pages[0]).group(1)
    accept = {"action": "accept", "version": "0", "candidate": candidate}
    alice.post("/item/2", data={**accept, "csrf": csrf_of(pages[0])})
    # bob's review is a second, independent one: alice's decision is not an edit he would overwrite
    saved = bob.post("/item/2", data={"csrf": csrf_of(pages[1]), "action": "reject", "version": "0"})
    assert saved.url.path != "/item/2" and "Saved: item 2 rejected" in saved.text
    assert [(r["reviewer"], r["decision"]) for r in store.item(2)["reviews"]] == [
        ("alice", "accepted"),
        ("bob", "rejected"),
    ]
    # carol would be a third review of an item that has its two: a conflict, nothing saved
    conflict = carol.post("/item/2", data={"csrf": csrf_of(pages[2]), "action": "reject", "version": "0"})
    assert conflict.status_code == 409 and "changed while you were looking" in conflict.text
    assert len(store.item(2)["reviews"]) == 2
    # bob changing his own review from a stale page is a conflict too (two tabs of one reviewer)
    again = bob.post("/item/2", data={**accept, "csrf": csrf_of(pages[1])})
    assert again.status_code == 409 and store.item(2)["reviews"][1]["decision"] == "rejected"
    stats = bob.get("/stats").text
    assert "Agreement between reviewers" in stats and "0 %" in stats  # they disagreed
    assert re.search(r"<td>alice</td><td>1</td><td>1</td>", stats)


def test_unknown_item_and_malformed_form(store):
    client = sign_in(client_for(store), "alice")
    assert client.get("/item/999").status_code == 404
    page = client.get("/item/2").text
    assert (
        client.post("/item/2", data={"csrf": csrf_of(page), "action": "accept", "version": "x"}).status_code
        == 400
    )
    assert (
        client.post("/item/2", data={"csrf": csrf_of(page), "action": "shrug", "version": "0"}).status_code
        == 400
    )


def test_loopback_server_refuses_foreign_host_headers(store):
    client = TestClient(create_app(store.path, allowed_hosts=["127.0.0.1"]), base_url="http://evil.example")
    assert client.get("/login").status_code == 400


def test_review_refuses_to_listen_on_the_network_without_a_token(store, monkeypatch):
    monkeypatch.delenv("MBIAS_REVIEW_TOKEN", raising=False)
    result = CliRunner().invoke(app, ["review", "--db", str(store.path), "--host", "0.0.0.0"])
    assert isinstance(result.exception, MbiasError) and "--token" in str(result.exception)
    result = CliRunner().invoke(app, ["review", "--db", str(store.path.with_name("missing.db"))])
    assert isinstance(result.exception, MbiasError) and "no such annotation database" in str(result.exception)
    import socket

    with socket.socket() as taken:  # a port another server holds: one line, not uvicorn's log
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = CliRunner().invoke(app, ["review", "--db", str(store.path), "--port", port])
    assert isinstance(result.exception, MbiasError) and "cannot listen on 127.0.0.1" in str(result.exception)


def test_a_decision_that_is_not_saved_keeps_the_reviewers_typed_text(store):
    alice, bob = sign_in(client_for(store), "alice"), sign_in(client_for(store), "bob")
    alice_page, bob_page = alice.get("/item/2").text, bob.get("/item/2").text
    alice.post("/item/2", data={"csrf": csrf_of(alice_page), "action": "reject", "version": "0"})
    typed = "Some drivers need more practice than others."
    conflict = bob.post(
        "/item/2", data={"csrf": csrf_of(bob_page), "action": "edit", "version": "0", "text": typed}
    )
    assert conflict.status_code == 409 and "changed while you were looking" in conflict.text
    assert f">{typed}</textarea>" in conflict.text  # not the model's candidate: what bob typed
    bob.post(
        "/item/2",
        data={"csrf": csrf_of(conflict.text), "action": "edit", "version": "1", "text": typed + "\x00"},
    )
    assert store.item(2)["reviews"][-1]["final_text"] == typed  # a pasted control character is dropped
    assert f">{typed}</textarea>" in bob.get("/item/2").text  # reopened: his own edit, to fix a typo


def test_numbers_past_what_sqlite_stores_and_oversized_chunked_forms_are_refused(store):
    client = sign_in(client_for(store), "alice")
    huge = "99999999999999999999999"
    assert client.get(f"/item/{huge}").status_code == 404
    assert client.get(f"/next?after={huge}", follow_redirects=False).status_code in (200, 303)
    page = client.get("/item/2").text
    assert (
        client.post("/item/2", data={"csrf": csrf_of(page), "action": "reject", "version": huge}).status_code
        == 400
    )

    def chunks():  # no Content-Length: the size is only known while reading
        yield f"csrf={csrf_of(page)}&action=edit&version=0&text=START".encode()
        for _ in range(100):
            yield b"z" * 1024
        yield b"END"

    response = client.post(
        "/item/2", content=chunks(), headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert response.status_code == 413
    assert store.item(2)["status"] == "pending"  # a cut edit is never saved
