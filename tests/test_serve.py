"""The HTTP service and the guard proxy, through a real ASGI client and a real upstream server."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.testclient import TestClient

from mbias.engines import load_engine
from mbias.errors import UpstreamError
from mbias.intervene import Debiaser, DebiasSettings
from mbias.serve.app import create_app
from tests.doubles import FixedJudge, ScriptedEngine


class CountingEngine(ScriptedEngine):
    """Records how many prompts each model call carried, to see requests merged into batches."""

    def __init__(self):
        super().__init__(["please fix the printer"])
        self.lock = threading.Lock()

    def generate(self, prompts, **kwargs):
        with self.lock:
            return super().generate(prompts, **kwargs)


def make_client(engine=None, **kwargs) -> TestClient:
    debiaser = Debiaser(engine or CountingEngine(), judge=FixedJudge(), prompt_style="mbias")
    return TestClient(create_app(debiaser, **kwargs))


def test_debias_endpoint_rewrites_only_unsafe_text():
    with make_client() as client:
        response = client.post(
            "/v1/debias", json={"texts": ["the printer is slow", "you idiot fix the printer"]}
        )
        assert response.status_code == 200
        clean, toxic = response.json()["results"]
        assert clean["action"] == "kept" and clean["rewrite"] == "the printer is slow"
        assert toxic["action"] == "rewritten" and toxic["rewrite"] == "please fix the printer"
        assert client.get("/health").json()["status"] == "ok"


@pytest.mark.parametrize(
    "body", [{}, {"text": "a", "texts": ["b"]}, {"texts": []}, {"text": "x" * 20_001}, {"texts": ["a"] * 300}]
)
def test_bad_requests_are_422(body):
    with make_client() as client:
        assert client.post("/v1/debias", json=body).status_code == 422


def test_any_of_several_keys_is_accepted(tmp_path, monkeypatch):
    from mbias.errors import MbiasError
    from mbias.serve.limits import api_keys

    key_file = tmp_path / "keys"
    key_file.write_text("# rotated in December\nnew-key\n\n")
    monkeypatch.setenv("MBIAS_SERVE_TOKEN", "env-a, env-b")
    keys = api_keys(["s3cret"], str(key_file))
    assert keys == {"s3cret", "new-key", "env-a", "env-b"}
    with make_client(keys=keys) as client:
        assert client.post("/v1/debias", json={"text": "hi"}).status_code == 401
        wrong = client.post("/v1/debias", json={"text": "hi"}, headers={"Authorization": "Bearer s3cre"})
        assert wrong.status_code == 401
        for key in sorted(keys):
            ok = client.post("/v1/debias", json={"text": "hi"}, headers={"Authorization": f"Bearer {key}"})
            assert ok.status_code == 200
    key_file.write_text("# nothing yet\n")
    with pytest.raises(MbiasError, match="holds no key"):
        api_keys([], str(key_file))
    with pytest.raises(MbiasError, match="cannot read"):
        api_keys([], str(tmp_path / "missing"))


def test_oversized_bodies_get_413_declared_or_streamed():
    with make_client(max_body_bytes=2000) as client:
        big = {"text": "word " * 1000}
        assert client.post("/v1/debias", json=big).status_code == 413
        chunked = iter([b'{"text": "', b"x" * 1500, b"y" * 1500, b'"}'])  # no Content-Length
        response = client.post("/v1/debias", content=chunked, headers={"content-type": "application/json"})
        assert response.status_code == 413 and "2,000 bytes" in response.json()["detail"]
        assert client.post("/v1/debias", json={"text": "small"}).status_code == 200


def test_a_request_past_its_deadline_gets_504_and_abandoned_work_is_skipped():
    import time

    class SlowFirstCall(CountingEngine):
        def generate(self, prompts, **kwargs):
            if not self.calls:
                time.sleep(1.0)
            return super().generate(prompts, **kwargs)

    engine = SlowFirstCall()
    with make_client(engine, request_timeout=0.4) as client:
        first = client.post("/v1/debias", json={"text": "you idiot fix the printer"})
        assert first.status_code == 504 and "within 0.4 s" in first.json()["detail"]
        queued = client.post("/v1/debias", json={"text": "you idiot, the queue is long"})
        assert queued.status_code == 504  # waited behind the slow call, and was given up
        time.sleep(0.8)
        assert client.post("/v1/debias", json={"text": "the printer is slow"}).status_code == 200
    prompts = [p for call in engine.calls for p in call]
    assert any("fix the printer" in p for p in prompts)
    assert not any("the queue is long" in p for p in prompts)  # never reached the model


def test_upstream_failures_map_to_502_504_or_their_own_4xx():
    import time

    from mbias.serve.background import serve_in_thread

    upstream_app = FastAPI()

    @upstream_app.get("/v1/models")
    def models():
        return {"data": [{"id": "m"}]}

    @upstream_app.post("/v1/chat/completions")
    def chat(body: dict):  # a plain def: FastAPI runs it in a thread, so "slow" blocks no one else
        kind = body["messages"][0]["content"]
        if kind == "slow":
            time.sleep(3.0)
        if kind == "broken":
            return JSONResponse({"error": "boom"}, status_code=500)
        return JSONResponse({"error": {"message": "unknown model"}}, status_code=404)

    body = lambda kind, **more: {"messages": [{"role": "user", "content": kind}], **more}  # noqa: E731
    with serve_in_thread(upstream_app) as base_url:
        upstream = load_engine(f"openai:{base_url}/v1#m", backoff=0.01, retries=0, timeout=1.0)
        with make_client(upstream=upstream) as client:
            for stream in (False, True):
                refused = client.post("/v1/chat/completions", json=body("refused", stream=stream))
                assert refused.status_code == 404 and "unknown model" in refused.json()["detail"]
                broken = client.post("/v1/chat/completions", json=body("broken", stream=stream))
                assert broken.status_code == 502 and "HTTP 500" in broken.json()["detail"]
                slow = client.post("/v1/chat/completions", json=body("slow", stream=stream))
                assert slow.status_code == 504 and "did not answer in time" in slow.json()["detail"]
            assert client.post("/v1/chat/completions", content=b"{not json").status_code == 400
    gone = load_engine(f"openai:{base_url}/v1#m", backoff=0.01, retries=0)  # the server has stopped
    with make_client(upstream=gone) as client:
        unreachable = client.post("/v1/chat/completions", json=body("hello"))
        assert unreachable.status_code == 502 and "cannot be reached" in unreachable.json()["detail"]


def test_concurrent_requests_share_model_calls():
    engine = CountingEngine()
    debiaser = Debiaser(engine, judge=FixedJudge(), prompt_style="mbias")
    app = create_app(debiaser, max_batch=16, max_wait_ms=200)

    async def scenario():
        await app.state.batcher.start()
        try:
            records = [[{"id": "0", "text": f"you idiot number {i}"}] for i in range(8)]
            return await asyncio.gather(*(app.state.batcher.submit(r) for r in records))
        finally:
            await app.state.batcher.stop()

    results = asyncio.run(scenario())
    assert [r[0]["text"] for r in results] == [f"you idiot number {i}" for i in range(8)]
    assert len(engine.calls) < 8 and sum(len(c) for c in engine.calls) == 8


def test_guard_proxy_rewrites_upstream_answers(chat_server):
    url, _ = chat_server
    upstream = load_engine(f"openai:{url}", backoff=0.01)
    rewriter = ScriptedEngine(["a calm debiased version of you"])
    with make_client(rewriter, upstream=upstream) as client:
        body = {"messages": [{"role": "user", "content": "you idiot"}], "n": 1}
        answer = client.post("/v1/chat/completions", json=body).json()
        choice = answer["choices"][0]  # upstream said "Here is a debiased version: calm you idiot"
        assert (
            choice["message"]["content"] == "A calm debiased version of you"
        )  # capitalised as the answer was
        assert choice["mbias"]["action"] == "rewritten"
    with make_client() as client:
        assert client.post("/v1/chat/completions", json=body).status_code == 404


LONG_ANSWER = """## Plan

Here is a plan for the week. Ask each idiot on the team for a status update. Then merge the branches.

```bash
git merge idiot-branch
```

- Review the pull requests
- Ship on Friday
"""


def test_guard_rewrites_only_the_flagged_sentence_of_a_long_answer():
    from mbias.serve.background import serve_in_thread

    upstream_app = FastAPI()

    @upstream_app.post("/v1/chat/completions")
    def chat():
        return {"choices": [{"message": {"role": "assistant", "content": LONG_ANSWER}}]}

    with serve_in_thread(upstream_app) as base_url:
        upstream = load_engine(f"openai:{base_url}/v1#tiny", backoff=0.01)
        rewriter = ScriptedEngine(["Ask each person on the team for a status update."])
        with make_client(rewriter, upstream=upstream) as client:
            body = {"messages": [{"role": "user", "content": "plan my week"}]}
            choice = client.post("/v1/chat/completions", json=body).json()["choices"][0]
    old = "Ask each idiot on the team for a status update."
    assert choice["message"]["content"] == LONG_ANSWER.replace(old, rewriter.outputs[0])
    assert "git merge idiot-branch" in choice["message"]["content"]  # code is never touched
    [span] = choice["mbias"]["spans"]
    assert span["original"] == old and span["action"] == "rewritten"
    assert LONG_ANSWER[span["start"] : span["end"]] == old


def test_operations_endpoints_and_metrics():
    with make_client() as client:
        assert client.get("/healthz").json()["status"] == "ok"
        assert client.get("/readyz").json() == {"ready": True}
        assert client.get("/v1/models").json()["data"][0]["id"] == "scripted"
        answer = "The printer is fine. Only an idiot breaks it. Thanks."
        scored = client.post("/v1/score", json={"texts": ["calm words", "you idiot", answer]}).json()[
            "results"
        ]
        assert [r["unsafe"] for r in scored] == [False, True, True] and scored[0]["category"] is None
        assert scored[1]["worst_sentence"] is None  # one sentence: the text itself
        assert scored[2]["worst_sentence"] == "Only an idiot breaks it." and scored[2]["text"] == answer
        assert scored[2]["category"] == "insult or profanity"
        client.post("/v1/debias", json={"text": "you idiot fix the printer"})
        text = client.get("/metrics").text
        assert 'mbias_requests_total{path="/v1/debias",status="200"} 1.0' in text
        assert "mbias_batch_size_count 1.0" in text and "mbias_request_seconds_bucket" in text
        assert "mbias_queue_depth" in text
    assert client.app.state.ready is False  # after shutdown


def test_server_loads_the_escalation_engine_before_it_reports_ready(monkeypatch):
    """With --escalate the second engine is loaded at start, so no request waits for it, and a text
    the first engine leaves flagged comes back with the second engine's rewrite."""
    import mbias.intervene as intervene

    loaded = []
    larger = ScriptedEngine(["please fix the printer"])
    monkeypatch.setattr(intervene, "load_engine", lambda spec, **options: loaded.append(spec) or larger)
    settings = DebiasSettings(escalate="hf:larger-model")
    debiaser = Debiaser(
        ScriptedEngine(["idiot"]), judge=FixedJudge(), prompt_style="mbias", settings=settings
    )
    app = create_app(debiaser)
    assert loaded == []
    with TestClient(app) as client:
        assert loaded == ["hf:larger-model"] and client.get("/readyz").json() == {"ready": True}
        assert client.get("/healthz").json()["escalate"] == "hf:larger-model"
        [record] = client.post("/v1/debias", json={"text": "you idiot fix the printer"}).json()["results"]
        assert (record["rewrite"], record["escalated"]) == ("please fix the printer", True)
    assert loaded == ["hf:larger-model"]


def test_full_queue_answers_503_with_retry_after():
    class SlowEngine(CountingEngine):
        def generate(self, prompts, **kwargs):
            import time

            time.sleep(0.3)
            return super().generate(prompts, **kwargs)

    debiaser = Debiaser(SlowEngine(), judge=FixedJudge(), prompt_style="mbias")
    app = create_app(debiaser, max_queue=2, max_batch=1, max_wait_ms=0)

    async def burst():
        await app.state.batcher.start()
        try:
            tasks = [app.state.batcher.submit([{"id": "0", "text": f"you idiot {i}"}]) for i in range(5)]
            return await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            await app.state.batcher.stop()

    from mbias.serve.batcher import Overloaded

    results = asyncio.run(burst())
    refused = [r for r in results if isinstance(r, Overloaded)]
    served = [r for r in results if isinstance(r, list)]
    assert len(served) == 2 and len(refused) == 3 and app.state.batcher.pending == 0
    with TestClient(create_app(debiaser, max_queue=1)) as client:
        response = client.post("/v1/debias", json={"texts": ["a", "b"]})
        assert response.status_code == 503 and response.headers["retry-after"] == "1"


@pytest.mark.parametrize(
    ("policy", "expected"), [("rewrite", "Still an idiot"), ("block", "BLOCKED"), ("pass", None)]
)
def test_guard_policy_for_flagged_answers(chat_server, policy, expected):
    url, _ = chat_server
    upstream = load_engine(f"openai:{url}", backoff=0.01)
    rewriter = ScriptedEngine(["still an idiot"])  # every candidate stays unsafe: the answer is flagged
    with make_client(rewriter, upstream=upstream, on_flagged=policy, block_message="BLOCKED") as client:
        body = {"messages": [{"role": "user", "content": "you idiot"}]}
        choice = client.post("/v1/chat/completions", json=body).json()["choices"][0]
    upstream_text = "Here is a debiased version: calm you idiot"
    assert choice["message"]["content"] == (expected or upstream_text)
    assert choice["mbias"]["action"] == "flagged" and choice["mbias"]["policy"] == policy


def _streaming_upstream(answer: str, pace: float = 0.0) -> FastAPI:
    """An OpenAI-compatible stand-in that streams ``answer`` a few characters per chunk, ``pace``
    seconds apart."""
    from fastapi.responses import StreamingResponse

    app = FastAPI()

    @app.post("/v1/chat/completions")
    def chat():
        def events():
            for i in range(0, len(answer), 7):
                time.sleep(pace)
                delta = {"choices": [{"index": 0, "delta": {"content": answer[i : i + 7]}}], "model": "tiny"}
                yield f"data: {json.dumps(delta)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


def _events(response) -> list:
    return [
        line[6:] if line[6:] == "[DONE]" else json.loads(line[6:])
        for line in response.iter_lines()
        if line.startswith("data: ")
    ]


@pytest.mark.parametrize("policy", ["rewrite", "block"])
def test_streaming_guard_releases_sentences_and_rewrites_the_flagged_one(policy):
    from mbias.serve.background import serve_in_thread

    with serve_in_thread(_streaming_upstream(LONG_ANSWER, pace=0.02)) as base_url:
        upstream = load_engine(f"openai:{base_url}/v1#tiny", backoff=0.01)
        fixed = "Ask each person on the team for a status update."
        rewriter = ScriptedEngine([fixed if policy == "rewrite" else "Ask each idiot anyway."])
        with make_client(rewriter, upstream=upstream, on_flagged=policy, block_message="BLOCKED") as client:
            body = {"messages": [{"role": "user", "content": "plan my week"}], "stream": True}
            with client.stream("POST", "/v1/chat/completions", json=body) as response:
                assert response.headers["content-type"].startswith("text/event-stream")
                events = _events(response)
    assert events[-1] == "[DONE]"
    final = events[-2]
    pieces = [e["choices"][0]["delta"].get("content", "") for e in events[:-1]]
    old = "Ask each idiot on the team for a status update."
    assert len([p for p in pieces if p]) >= 3  # sentences leave as they complete, not at the end
    assert final["choices"][0]["finish_reason"] == ("stop" if policy == "rewrite" else "content_filter")
    [span] = final["mbias"]["spans"]
    assert span["original"] == old and LONG_ANSWER[span["start"] : span["end"]] == old
    if policy == "rewrite":
        assert "".join(pieces) == LONG_ANSWER.replace(old, rewriter.outputs[0])
        assert "".join(pieces)[span["output_start"] : span["output_end"]] == span["rewrite"]
    else:  # the clean sentences before it already left; the flagged one ends the answer
        assert "".join(pieces) == "## Plan\n\nHere is a plan for the week. BLOCKED"
        assert final["mbias"]["action"] == "flagged"


def test_streaming_guard_checks_what_arrived_during_a_check_in_one_call():
    from mbias.serve.stream import guarded_stream

    sentences = [f"Sentence number {i} is here. " for i in range(8)]
    checked: list[str] = []

    async def upstream():  # instant: every chunk is there before the first check ends
        for sentence in sentences:
            yield {"choices": [{"delta": {"content": sentence}}]}

    async def check(piece: str) -> dict:
        checked.append(piece)
        await asyncio.sleep(0.05)
        return {"text": piece, "rewrite": piece, "action": "kept", "spans": []}

    async def collect() -> list[bytes]:
        return [e async for e in guarded_stream(upstream(), check, lambda r: r["rewrite"], "rewrite")]

    events = asyncio.run(collect())
    assert "".join(checked) == "".join(sentences)  # every character checked once, in order
    assert len(checked) < len(sentences)  # not one judge call per sentence
    assert events[-1] == b"data: [DONE]\n\n"


def test_ready_prefix_holds_the_sentence_in_progress_and_open_code():
    from mbias.serve.stream import ready_prefix

    assert ready_prefix("The first sentence is done. The second is still gro") == len(
        "The first sentence is done. "
    )
    assert ready_prefix("Only one sentence so far") == 0
    assert ready_prefix("Run this.\n\n```\nx = 1. Still code. More") == 0


JSON = {"content-type": "application/json"}


def test_text_that_is_not_valid_unicode_is_refused_clearly_and_errors_echo_no_input():
    """JSON may escape a lone surrogate ("\\ud800"); UTF-8 cannot encode one. Each endpoint refuses it
    with a 4xx that names it, and a 422 never echoes the input back (it may be megabytes)."""
    lone = b'"abc \\ud800 def."'
    with make_client() as client:
        for path in ("/v1/debias", "/v1/score"):
            response = client.post(path, content=b'{"texts": [' + lone + b"]}", headers=JSON)
            assert response.status_code == 422 and "lone surrogate" in response.text
            assert "abc" not in response.text  # the input is not echoed
        big = client.post("/v1/debias", json={"text": "x" * 20_001})
        assert big.status_code == 422 and len(big.content) < 1_000


def _scripted_upstream(answer: Any) -> FastAPI:
    """An upstream whose non-streamed answer is ``answer`` (any JSON) and whose streamed answer is
    the list of raw SSE lines under ``answer["stream"]`` when it is a dict holding one."""
    from fastapi.responses import StreamingResponse

    app = FastAPI()
    seen = {"calls": 0}
    app.state.seen = seen

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        seen["calls"] += 1
        body = await request.json()
        if body.get("stream"):
            lines = answer["stream"]
            return StreamingResponse((f"{line}\n\n" for line in lines), media_type="text/event-stream")
        return Response(json.dumps(answer), media_type="application/json")  # escapes a lone surrogate

    return app


def _delta(**delta) -> str:
    finish = delta.pop("finish", None)
    return "data: " + json.dumps({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})


def _guarded_stream(lines: list[str]) -> list:
    """The events the streaming guard sends for an upstream that streams these raw SSE lines."""
    from mbias.serve.background import serve_in_thread

    with serve_in_thread(_scripted_upstream({"stream": lines})) as base_url:
        upstream = load_engine(f"openai:{base_url}/v1#tiny", backoff=0.01)
        body = {"messages": [], "stream": True}
        with (
            make_client(upstream=upstream) as client,
            client.stream("POST", "/v1/chat/completions", json=body) as response,
        ):
            return _events(response)


def test_guard_refuses_bad_client_fields_and_bad_upstream_answers_without_a_500():
    from mbias.serve.background import serve_in_thread

    body = {"messages": [{"role": "user", "content": "hi"}]}
    with serve_in_thread(_scripted_upstream([1, 2])) as base_url:
        upstream = load_engine(f"openai:{base_url}/v1#tiny", backoff=0.01)
        with make_client(upstream=upstream) as client:
            bad_upstream = client.post("/v1/chat/completions", json=body)
            assert bad_upstream.status_code == 502 and "choices" in bad_upstream.json()["error"]["message"]
            for n in ("abc", [1], 0, True):
                refused = client.post("/v1/chat/completions", json={**body, "n": n, "stream": True})
                assert refused.status_code == 400
                assert refused.json()["error"]["type"] == "invalid_request_error"
            lone = b'{"messages": [{"role": "user", "content": "\\ud800"}]}'
            assert client.post("/v1/chat/completions", content=lone, headers=JSON).status_code == 400
            nested = client.post("/v1/chat/completions", content=b"[" * 100_000)
            assert nested.status_code == 400


def test_guard_passes_tool_calls_and_empty_answers_untouched_even_when_blocking():
    from mbias.serve.background import serve_in_thread

    call = {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
    answer = {
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": None, "tool_calls": [call]}},
            {"index": 1, "message": {"role": "assistant", "content": "you idiot\ud800 fix the printer"}},
            {"index": 2},
        ]
    }
    with serve_in_thread(_scripted_upstream(answer)) as base_url:
        upstream = load_engine(f"openai:{base_url}/v1#tiny", backoff=0.01)
        with make_client(upstream=upstream, on_flagged="block", block_message="BLOCKED") as client:
            choices = client.post("/v1/chat/completions", json={"messages": []}).json()["choices"]
    assert choices[0]["message"] == answer["choices"][0]["message"] and "mbias" not in choices[0]
    assert choices[1]["message"]["content"] == "please fix the printer"  # the lone surrogate became U+FFFD
    assert choices[2] == {"index": 2}


def test_streaming_guard_passes_tool_calls_finish_reason_and_usage_through():

    call = {"index": 0, "id": "c1", "type": "function", "function": {"name": "lookup", "arguments": ""}}
    lines = [
        _delta(role="assistant", content=""),
        _delta(role="assistant", reasoning_content="the user is an idiot"),  # unchecked text: dropped
        _delta(content="Let me look that up. One moment"),
        _delta(tool_calls=[call]),
        _delta(finish="tool_calls"),
        "data: " + json.dumps({"choices": [], "usage": {"total_tokens": 42}}),
        "data: [DONE]",
    ]
    events = _guarded_stream(lines)
    deltas = [e["choices"][0]["delta"] for e in events[:-1]]
    assert deltas[0] == {"role": "assistant"} and sum("role" in d for d in deltas) == 1
    assert not any("reasoning_content" in d for d in deltas)
    text = "".join(d.get("content", "") for d in deltas)
    assert text == "Let me look that up. One moment"
    tool = next(i for i, d in enumerate(deltas) if "tool_calls" in d)
    assert deltas[tool]["tool_calls"] == [call] and all("content" not in d for d in deltas[tool:])
    final = events[-2]
    assert final["choices"][0]["finish_reason"] == "tool_calls" and final["usage"] == {"total_tokens": 42}


@pytest.mark.parametrize(
    "ending",
    [[], ["data: " + json.dumps({"error": {"message": "model overloaded"}})]],
    ids=["cut", "error-event"],
)
def test_a_stream_the_upstream_breaks_ends_in_an_error_not_a_finished_answer(ending):

    lines = [_delta(content="Here is the first sentence. And a second one that"), *ending]
    events = _guarded_stream(lines)
    assert events[-1] == "[DONE]" and "error" in events[-2]
    assert events[-2]["error"]["type"] == "upstream_error"
    assert ("overloaded" in events[-2]["error"]["message"]) == bool(ending)
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-2])
    assert text == "Here is the first sentence. And a second one that"  # checked, and none of it lost
    assert not any(e.get("choices", [{}])[0].get("finish_reason") for e in events[:-1])


def test_upstream_retries_stop_at_the_requests_deadline():
    from mbias.serve.background import serve_in_thread

    app = FastAPI()
    calls = []

    @app.post("/v1/chat/completions")
    def chat():
        calls.append(time.monotonic())
        return JSONResponse({"error": "busy"}, status_code=503)

    with serve_in_thread(app) as base_url:
        upstream = load_engine(f"openai:{base_url}/v1#tiny", backoff=0.2, retries=5)
        start = time.monotonic()
        with pytest.raises(UpstreamError, match="HTTP 503"):
            upstream.request("POST", "/chat/completions", {}, deadline=start + 1.5)
        assert time.monotonic() - start < 1.5
        # tries at 0, 0.2 and 0.6 s; the next, after 0.8 s more, would leave under 0.5 s to answer
        assert len(calls) == 3
        with pytest.raises(UpstreamError, match="no time was left") as late:
            upstream.request("POST", "/chat/completions", {}, deadline=time.monotonic() + 0.1)
        assert late.value.status == 504 and len(calls) == 3


def test_an_upstream_that_trickles_its_answer_is_cut_at_the_deadline():
    """httpx's timeout bounds each read: a byte every 50 ms never trips it, so the deadline is
    checked while the body arrives, and a whole answer read in time still comes back."""
    from fastapi.responses import StreamingResponse

    from mbias.serve.background import serve_in_thread

    app = FastAPI()
    answer = json.dumps({"choices": [{"message": {"content": "fine" + "." * 100}}]}).encode()  # 7 s in bytes

    @app.post("/v1/chat/completions")
    async def chat(slow: bool = True):
        async def trickle():
            for byte in answer:
                await asyncio.sleep(0.05 if slow else 0)
                yield bytes([byte])

        return StreamingResponse(trickle(), media_type="application/json")

    with serve_in_thread(app) as base_url:
        upstream = load_engine(f"openai:{base_url}/v1#tiny", retries=0, timeout=30)
        start = time.monotonic()
        with pytest.raises(UpstreamError, match="did not answer in time") as late:
            upstream.request("POST", "/chat/completions", {}, deadline=start + 1.0)
        assert late.value.status == 504 and time.monotonic() - start < 2.5
        fast = upstream.request("POST", "/chat/completions?slow=false", {}, deadline=time.monotonic() + 5)
        assert fast["choices"][0]["message"]["content"].startswith("fine")


def test_metrics_count_failed_and_refused_requests():
    class BrokenJudge(FixedJudge):
        def categorise(self, texts):
            raise RuntimeError("judge crashed")

    debiaser = Debiaser(CountingEngine(), judge=BrokenJudge(), prompt_style="mbias")
    app = create_app(debiaser, max_body_bytes=100)
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.post("/v1/score", json={"text": "calm"}).status_code == 500
        assert client.post("/v1/debias", json={"text": "x" * 200}).status_code == 413
        text = client.get("/metrics").text
    assert 'mbias_requests_total{path="/v1/score",status="500"} 1.0' in text
    assert 'status="413"' in text


def test_a_stream_that_finishes_without_done_is_whole_and_a_blocked_answer_calls_no_tool():
    from mbias.serve.background import serve_in_thread

    finished = [_delta(content="All good here. Have a nice day."), _delta(finish="stop")]  # no [DONE]
    events = _guarded_stream(finished)
    assert events[-1] == "[DONE]" and events[-2]["choices"][0]["finish_reason"] == "stop"
    assert not any("error" in e for e in events[:-1])

    call = {
        "id": "c1",
        "type": "function",
        "function": {"name": "delete_files", "arguments": '{"q": "\ud800"}'},
    }
    answer = {
        "choices": [
            {
                "index": 0,
                "finish_reason": "tool_calls",
                "message": {"role": "assistant", "content": "you idiot", "tool_calls": [call]},
            }
        ]
    }
    with serve_in_thread(_scripted_upstream(answer)) as base_url:
        upstream = load_engine(f"openai:{base_url}/v1#tiny", backoff=0.01)
        rewriter = ScriptedEngine(["still an idiot"])  # nothing fixes it: flagged, and blocked
        with make_client(rewriter, upstream=upstream, on_flagged="block", block_message="BLOCKED") as client:
            [choice] = client.post("/v1/chat/completions", json={"messages": []}).json()["choices"]
    assert choice["message"] == {"role": "assistant", "content": "BLOCKED"}
    assert choice["finish_reason"] == "content_filter"


def test_guard_refuses_content_it_cannot_read_instead_of_passing_it_unchecked():
    from mbias.serve.background import serve_in_thread

    parts = {
        "choices": [{"message": {"role": "assistant", "content": [{"type": "text", "text": "you idiot"}]}}]
    }
    with serve_in_thread(_scripted_upstream(parts)) as base_url:
        upstream = load_engine(f"openai:{base_url}/v1#tiny", backoff=0.01)
        with make_client(upstream=upstream) as client:
            response = client.post("/v1/chat/completions", json={"messages": []})
    assert response.status_code == 502 and "cannot read" in response.json()["error"]["message"]
