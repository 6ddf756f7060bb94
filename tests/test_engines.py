"""Engines: the transformers backend on a tiny random model, the OpenAI client against a real server."""

from __future__ import annotations

import pytest

from mbias.engines import load_engine
from mbias.errors import MbiasError


def test_hf_engine_batch_equals_one_at_a_time(tiny_model_dir):
    engine = load_engine(f"hf:{tiny_model_dir}")
    prompts = ["Old people are", "Women are bad drivers and the library is open"]
    batched = engine.generate(prompts, max_new_tokens=6)
    single = [engine.generate([p], max_new_tokens=6)[0] for p in prompts]
    assert batched == single
    assert engine.tokenizer.padding_side == "left"


def test_hf_engine_samples_n_candidates(tiny_model_dir):
    engine = load_engine(f"hf:{tiny_model_dir}")
    out = engine.generate(["Old people", "Women"], max_new_tokens=5, temperature=1.0, n=3)
    assert [len(c) for c in out] == [3, 3]
    assert all(isinstance(t, str) for c in out for t in c)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nonsense", "unknown engine spec"),
        ("ftp:thing", "unknown engine scheme"),
        ("hf:/definitely/not/here", "cannot load model"),
        ("openai:localhost:1#m", "needs a URL"),
    ],
)
def test_bad_specs_fail_clearly(spec, message):
    with pytest.raises(MbiasError, match=message):
        load_engine(spec)


def test_openai_engine_retries_and_discovers_model(chat_server, monkeypatch):
    from mbias.intervene import Debiaser

    url, seen = chat_server
    monkeypatch.setenv("MBIAS_API_KEY", "secret-key")
    engine = load_engine(f"openai:{url}", backoff=0.01)
    assert engine.model == "tiny-chat"
    out = engine.generate(["one", "two"], n=2)
    assert [len(c) for c in out] == [2, 2]
    assert seen["auth"] == "Bearer secret-key"
    records = Debiaser(engine, prompt_style="chat").debias(["rude text"])
    assert records[0]["rewrite"] == "calm rude text"  # preamble removed by clean_output


def test_openai_engine_unreachable_server_is_one_line_error():
    from mbias.serve.background import free_port

    port = free_port()  # nothing listens there
    with pytest.raises(MbiasError, match="cannot be reached") as info:
        load_engine(f"openai:http://127.0.0.1:{port}/v1#m", retries=1, backoff=0.01).generate(["x"])
    assert "\n" not in str(info.value)


@pytest.mark.integration
def test_embedded_model_rewrites_real_texts():
    """The real gemma-3-270m (with the shipped adapter when present): non-empty, on-topic answers."""
    from mbias import Debiaser, DebiasSettings

    texts = [
        "Old people are useless at work and should retire already.",
        "That idiot at the help desk screwed up my order again.",
        "The museum opens at nine on Sundays.",
    ]
    records = Debiaser("mbias-270m", settings=DebiasSettings(max_new_tokens=48)).debias(texts)
    assert [r["id"] for r in records] == ["0", "1", "2"]
    for record in records:
        assert record["rewrite"].strip(), record
        assert record["action"] in {"kept", "rewritten", "flagged"}
