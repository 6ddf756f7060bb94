"""On-disk embeddings keyed by a hash of the exact text, so re-training the heads skips the encoder.

Shards are written after every chunk: an interrupted run keeps what it already encoded. Several
shards may hold the same key (two runs racing); the first loaded wins, they are equal anyway.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mbias import config
from mbias.judges.encoder import encode, encoder_id

CHUNK = 1024


def text_key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


class EmbeddingCache:
    """Vectors of one encoder (the packaged one, or it with ``adapter`` merged), kept on disk."""

    def __init__(self, directory: Path | None = None, adapter: Path | None = None):
        self.adapter = adapter
        self.directory = directory or config.cache_dir() / "embeddings" / encoder_id(adapter)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.vectors: dict[str, np.ndarray] = {}
        for shard in sorted(self.directory.glob("*.npz")):
            with np.load(shard) as data:
                for key, vector in zip(data["keys"].tolist(), data["vectors"]):
                    self.vectors.setdefault(key, vector)

    def embed(self, texts: list[str], on_progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """Rows for ``texts``; texts not cached yet are encoded in chunks and saved as a new shard.

        ``on_progress(done, total)`` is called after each chunk of missing texts.
        """
        missing = list(dict.fromkeys(t for t in texts if text_key(t) not in self.vectors))
        if on_progress:
            on_progress(0, len(missing))
        for start in range(0, len(missing), CHUNK):
            chunk = missing[start : start + CHUNK]
            vectors = encode(chunk, self.adapter)
            keys = [text_key(t) for t in chunk]
            np.savez(self.directory / f"{uuid.uuid4().hex}.npz", keys=np.array(keys), vectors=vectors)
            self.vectors.update(zip(keys, vectors))
            if on_progress:
                on_progress(min(start + CHUNK, len(missing)), len(missing))
        if not texts:
            return encode([], self.adapter)
        return np.stack([self.vectors[text_key(t)] for t in texts])
