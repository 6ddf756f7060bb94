"""The offline judge: a sentence encoder, classifier heads for toxicity and bias, cosine similarity.

The heads read the judge's own encoder (fine-tuned for them, mbias.judges.tune_encoder); meaning
kept is the cosine of the packaged, untouched encoder, which was trained for exactly that and must
not drift with the heads. The Debiaser scores a candidate and then measures its similarity to the
source, so a small memo of recent embeddings per encoder saves encoding a text twice.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from mbias import config
from mbias.errors import MbiasError
from mbias.judges import Margin, head_margin
from mbias.judges.encoder import encode
from mbias.judges.heads import HeadSet

HEADS_PATH = config.JUDGE_ASSETS / "heads.json"
MEMO_SIZE = 4096


class EmbeddedJudge:
    """Implements the :class:`mbias.judges.Judge` protocol with the shipped heads."""

    def __init__(self, heads_path: str | Path | None = None, heads: HeadSet | None = None):
        self.heads = heads if heads is not None else HeadSet.load(Path(heads_path or HEADS_PATH))
        self._memos: dict[Path | None, OrderedDict[str, np.ndarray]] = {}
        self._lock = threading.Lock()

    @property
    def thresholds(self) -> dict[str, float]:
        return {name: head.threshold for name, head in self.heads.heads.items()}

    def embed(self, texts: list[str]) -> np.ndarray:
        """The heads' input: one unit-length row per text from the judge's own encoder."""
        return self._vectors(texts, self.heads.adapter)

    def _vectors(self, texts: list[str], adapter: Path | None) -> np.ndarray:
        """Rows from one encoder; each distinct text not in that encoder's memo is encoded once.
        One call at a time: ``serve`` scores from its request threads while its model thread
        screens, and the memo is an OrderedDict."""
        with self._lock:
            return self._vectors_unlocked(texts, adapter)

    def _vectors_unlocked(self, texts: list[str], adapter: Path | None) -> np.ndarray:
        memo = self._memos.setdefault(adapter, OrderedDict())
        missing = list(dict.fromkeys(t for t in texts if t not in memo))
        if missing:
            for text, vector in zip(missing, encode(missing, adapter)):
                memo[text] = vector
            while len(memo) > MEMO_SIZE:
                memo.popitem(last=False)
        rows = []
        for text in texts:
            vector = memo.get(text)
            if vector is None:  # evicted within this very call (more distinct texts than the memo holds)
                vector = encode([text], adapter)[0]
            else:
                memo.move_to_end(text)
            rows.append(vector)
        return np.stack(rows) if rows else encode([], adapter)

    def score_embeddings(self, embeddings: np.ndarray) -> list[dict[str, float]]:
        columns = {name: head.predict_proba(embeddings) for name, head in self.heads.heads.items()}
        return [{name: float(values[i]) for name, values in columns.items()} for i in range(len(embeddings))]

    def score(self, texts: list[str]) -> list[dict[str, float]]:
        """Per text: ``{"toxicity": p, "bias": p}``."""
        return self.score_embeddings(self.embed(list(texts)))

    def similarity(self, sources: list[str], outputs: list[str]) -> list[float]:
        """Cosine similarity of each source with its output (meaning retained), packaged encoder."""
        if len(sources) != len(outputs):
            raise MbiasError(f"similarity needs pairs: {len(sources)} sources but {len(outputs)} outputs")
        vectors = self._vectors(list(sources) + list(outputs), None)
        left, right = vectors[: len(sources)], vectors[len(sources) :]
        return [float(v) for v in np.clip(np.sum(left * right, axis=1), -1.0, 1.0)]

    def categorise(self, texts: list[str]) -> list[str | None]:
        """The harm each text most resembles (mbias.judges.categories), None without a category head."""
        if self.heads.category is None:
            return [None] * len(texts)
        return list(self.heads.category.predict_labels(self.embed(list(texts)))) if texts else []

    def resembles_harm(self, texts: list[str]) -> list[bool]:
        """Whether each text is clearly one of the harm categories: the category head's top
        probability at or above its threshold (chosen on the dev split,
        ``mbias.judges.categories.suspect_threshold``). True for every text without a category head."""
        if self.heads.category is None or not texts:
            return [True] * len(texts)
        top = self.heads.category.top_probability(self.embed(list(texts)))
        return [bool(p >= self.heads.category.threshold) for p in top]

    def assess(self, sources: list[str], candidates: list[str]) -> list[float] | None:
        """Per (source, candidate): the chance a blind reader finds the candidate both safe and
        faithful to its source (mbias.judges.readers); None for heads trained without readers."""
        if not self.heads.readers:
            return None
        from mbias.judges.readers import acceptability, pair_features

        if not sources:
            return []
        return [float(p) for p in acceptability(self.heads.readers, pair_features(self, sources, candidates))]

    def labels(self, scores: dict[str, float]) -> dict[str, int]:
        """0/1 per head at its calibrated threshold."""
        return {name: int(scores[name] >= threshold) for name, threshold in self.thresholds.items()}

    def is_unsafe(self, scores: dict[str, float], margin: Margin = 1.0) -> bool:
        """True when any head's score is at or above its margin times that head's threshold."""
        return any(
            scores[name] >= head_margin(margin, name) * threshold
            for name, threshold in self.thresholds.items()
        )
