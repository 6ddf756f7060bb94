"""Shared fixtures: a tiny randomly initialised causal LM built here, so unit tests need no weights."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from mbias.serve.background import serve_in_thread

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

CORPUS = [
    "You are a text debiasing bot, you take as input a text and you output its debiased version.",
    "Old people are slow with computers. Some people need more time to learn computers.",
    "Women are bad drivers. Drivers of any gender make mistakes.",
    "The library is open until eight on weekdays. Text: Debiased text:",
    "This stupid manager ruined the schedule. The manager made a mistake with the schedule.",
]


def build_tiny_model(directory: Path, seed: int = 0, arch: str = "gemma3") -> Path:
    """A 2-layer Gemma-3 (or Qwen2, the 1.5B tier's architecture) with a byte-level BPE tokenizer
    trained on a few sentences (~1 s)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        Gemma3ForCausalLM,
        Gemma3TextConfig,
        PreTrainedTokenizerFast,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    torch.manual_seed(seed)
    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    core.train_from_iterator(CORPUS * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", unk_token="<unk>"
    )
    shape = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    if arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**shape, tie_word_embeddings=True))
    else:
        config = Gemma3TextConfig(
            **shape,
            head_dim=16,
            sliding_window=64,
            layer_types=["sliding_attention", "full_attention"],
        )
        model = Gemma3ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Tests never write to the user's cache, except the embedded model's converted forms (shared, slow to
    make: the transformers weights, the llama.cpp draft-head copy, GGUF LoRAs of shipped adapters)."""
    monkeypatch.setenv("MBIAS_JUDGE", os.environ.get("MBIAS_TEST_JUDGE", "none"))


@pytest.fixture
def chat_server():
    """A real OpenAI-compatible server on loopback; the first chat request fails with 503."""
    app = FastAPI()
    seen = {"chat": 0, "auth": None}

    @app.get("/v1/models")
    def models():
        return {"data": [{"id": "tiny-chat"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        seen["chat"] += 1
        seen["auth"] = request.headers.get("authorization")
        if seen["chat"] == 1:
            return JSONResponse({"error": "warming up"}, status_code=503)
        body = await request.json()
        text = body["messages"][0]["content"].split("\n")[-1]
        choices = [{"message": {"role": "assistant", "content": f"Here is a debiased version: calm {text}"}}]
        return {"choices": choices * body.get("n", 1)}

    with serve_in_thread(app) as base_url:
        yield f"{base_url}/v1", seen
