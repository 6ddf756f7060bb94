"""`mbias review` as a real server driven by headless Chromium: sign-in, accept, edit and reject with
the keyboard shortcuts, then the database is checked; plus CSRF and XSS checks over real HTTP.

Needs the Python package ``playwright`` and Debian's ``/usr/bin/chromium`` (never ``playwright install``).
Set MBIAS_REVIEW_SCREENSHOT=docs/review-screenshot.png to save the review page for the docs.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from mbias.annotate.store import NewCandidate, NewItem, Store
from mbias.serve.background import free_port

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TOKEN = "review-token-123"
SCRIPT = "<script>alert('owned')</script> those people ruin every neighbourhood"


def build_db(path: Path) -> Store:
    store = Store(path)

    def scored(
        text: str, toxicity: float, bias: float, similarity: float, chosen: bool = False
    ) -> NewCandidate:
        scores = {"toxicity": toxicity, "bias": bias, "similarity": similarity}
        return NewCandidate(text, "hf:example-model", chosen=chosen, scores=scores)

    store.add_items(
        [
            NewItem(
                SCRIPT,
                "hf:example-model",
                candidates=[scored("<b>Neighbourhoods</b> change over time.", 0.1, 0.2, 0.4)],
            ),
            NewItem(
                "Women are too emotional to run a company, everybody knows that.",
                "hf:example-model",
                source_file="data/bias/gender_sexuality.jsonl",
                source_id="gender_sexuality-0042",
                group="women",
                dimension="gender_sexuality",
                scores={"toxicity": 0.41, "bias": 0.93},
                candidates=[
                    scored(
                        "Running a company well takes emotional control, whoever the leader is.",
                        0.02,
                        0.06,
                        0.71,
                        True,
                    ),
                    scored("People of any gender can run a company, everybody knows that.", 0.03, 0.12, 0.78),
                    scored("Women are emotional, so running a company is hard for them.", 0.22, 0.88, 0.83),
                ],
            ),
            NewItem(
                "Old folks can't learn to use a smartphone.",
                "hf:example-model",
                candidates=[
                    scored("Some people need more time to learn to use a smartphone.", 0.01, 0.08, 0.74)
                ],
            ),
        ],
        actor="test",
    )
    return store


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    db = tmp_path_factory.mktemp("review") / "annotations.db"
    store = build_db(db)
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "mbias.cli",
        "review",
        "--db",
        str(db),
        "--port",
        str(port),
        "--token",
        TOKEN,
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(f"{base}/login", timeout=2)
            break
        except httpx.TransportError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"mbias review did not start: {process.stdout.read().decode(errors='replace')}")
            time.sleep(0.2)
    yield base, store
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium (never `playwright install`)")
    from playwright.sync_api import sync_playwright  # the dev extra; a missing package is an error

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def test_review_in_a_browser_with_keyboard_shortcuts(server, browser, tmp_path):
    base, store = server
    page = browser.new_page(viewport={"width": 1200, "height": 1000})
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))

    page.goto(base + "/")
    assert page.url.endswith("/login")
    page.fill("#name", "alice")
    page.fill("#token", TOKEN)
    page.click("button[type=submit]")

    page.wait_for_url(re.compile(r"/item/1$"))  # the hostile text: shown as text, never run
    assert page.inner_text("#original") == SCRIPT
    assert page.locator(".candidate-text").inner_text() == "<b>Neighbourhoods</b> change over time."
    assert page.locator("main script, main b").count() == 0
    page.keyboard.press("s")

    page.wait_for_url(re.compile(r"/item/2$"))
    assert page.locator("del").count() >= 1 and page.locator("ins").count() >= 1
    assert "0 / 3 reviewed" in page.inner_text("#progress-text")
    screenshot = Path(os.environ.get("MBIAS_REVIEW_SCREENSHOT") or tmp_path / "review.png")
    page.screenshot(path=str(screenshot), full_page=True)
    page.keyboard.press("2")  # accept the second candidate

    page.wait_for_url(re.compile(r"/item/3$"))
    assert "Saved" in page.inner_text("#flash")
    page.keyboard.press("e")
    page.keyboard.press("End")
    page.keyboard.type(" Patient help makes it easier.")
    page.keyboard.press("Control+Enter")

    page.wait_for_url(re.compile(r"/item/1$"))  # the skipped item comes back round
    page.keyboard.press("r")
    page.wait_for_selector("text=Nothing left for you to review")
    assert "3 / 3 reviewed" in page.inner_text("#progress-text")

    page.click("text=Stats")
    assert page.locator("#reviewers td").first.inner_text() == "alice"
    assert dialogs == []
    page.close()

    items = {i: store.item(i) for i in (1, 2, 3)}
    assert [items[i]["status"] for i in (1, 2, 3)] == ["rejected", "accepted", "edited"]
    second = items[2]["candidates"][1]
    assert items[2]["reviews"][0]["candidate_id"] == second["id"]
    assert items[2]["reviews"][0]["final_text"] == second["text"]
    assert items[3]["reviews"][0]["final_text"] == (
        "Some people need more time to learn to use a smartphone. Patient help makes it easier."
    )
    assert {r["reviewer"] for r in store.reviews()} == {"alice"}
    assert [a["field"] for a in store.audit("item", 3)] == ["status", "status"]


def test_post_without_csrf_token_is_forbidden(server):
    base, store = server
    with httpx.Client(base_url=base) as client:
        page = client.get("/login").text
        csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
        assert (
            client.post("/login", data={"csrf": csrf, "name": "mallory", "token": TOKEN}).status_code == 303
        )
        item = client.get("/item/2").text
        assert 'name="version"' in item  # signed in: only the missing token stops the next POST
        before = store.item(2)
        response = client.post("/item/2", data={"action": "reject", "version": str(before["version"])})
        assert response.status_code == 403
        assert store.item(2)["reviews"] == before["reviews"]
        assert client.post("/login", data={"name": "x", "token": TOKEN}).status_code == 403


def test_hostile_text_is_escaped_in_the_served_html(server):
    base, _ = server
    with httpx.Client(base_url=base) as client:
        csrf = re.search(r'name="csrf" value="([^"]+)"', client.get("/login").text).group(1)
        client.post("/login", data={"csrf": csrf, "name": "carol", "token": TOKEN})
        html = client.get("/item/1").text
    assert "<script>alert" not in html
    assert "&lt;script&gt;alert(&#39;owned&#39;)&lt;/script&gt;" in html
    assert "&lt;b&gt;Neighbourhoods&lt;/b&gt;" in html
