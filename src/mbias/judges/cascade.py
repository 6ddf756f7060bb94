"""A two-stage judge: the embedded judge decides what it is sure of, an LLM judge the rest.

The embedded judge screens hundreds of sentences a second; an LLM judge (the paper's DeepEval
definitions, judges/llm.py) takes several model calls per text. Most sentences lie far from the
embedded threshold, so only those in an uncertain band around it, scaled by each head's own
threshold, go to the LLM. Its scores come back on the embedded judge's scale (its threshold maps
onto the head's, piecewise linearly), so ``is_unsafe`` and the Debiaser's screen margin mean the
same thing for both stages.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

from mbias.judges import Judge, Margin

MEMO_SIZE = 10_000  # second-stage answers kept, so a text asked twice costs one round of LLM calls


def onto_threshold(score: float, source: float, target: float) -> float:
    """Map a score in [0, 1] whose decision threshold is ``source`` onto a scale whose threshold
    is ``target``: monotone, threshold onto threshold, 0 onto 0 and 1 onto 1."""
    if score < source:
        return score / source * target
    return target + (score - source) / (1 - source) * (1 - target)


class CascadeJudge:
    """``first`` scores every text; texts where a head's score / threshold lies in ``band`` (and
    no head is sure they are unsafe) are re-scored by ``second``. A second-stage failure (NaN)
    keeps the first stage's scores."""

    def __init__(self, first: Any, second: Judge, band: tuple[float, float] = (0.5, 2.0)):
        low, high = band
        if not 0 <= low < 1 < high:
            raise ValueError(f"band must satisfy 0 <= low < 1 < high, got {band}")
        self.first = first
        self.second = second
        self.band = band
        self.second_threshold = float(getattr(second, "threshold", 0.5))
        self.asked = 0  # texts sent to the second stage
        self.failed = 0  # of which its answer was unusable
        self._memo: OrderedDict[str, dict[str, float]] = OrderedDict()

    @property
    def name(self) -> str:
        return f"embedded+{getattr(self.second, 'name', 'llm')}"

    @property
    def thresholds(self) -> dict[str, float]:
        return self.first.thresholds

    def uncertain(self, scores: dict[str, float]) -> bool:
        """Some head in the band, none past its top."""
        low, high = self.band
        ratios = [scores[head] / threshold for head, threshold in self.thresholds.items()]
        return all(r < high for r in ratios) and any(r >= low for r in ratios)

    def score(self, texts: list[str]) -> list[dict[str, float]]:
        scores = self.first.score(texts)
        unsure = list(dict.fromkeys(t for t, s in zip(texts, scores) if self.uncertain(s)))
        missing = [t for t in unsure if t not in self._memo]
        if missing:
            self.asked += len(missing)
            for text, answer in zip(missing, self.second.score(missing)):
                self._memo[text] = answer
                if len(self._memo) > MEMO_SIZE:
                    self._memo.popitem(last=False)
        asked = set(unsure)
        out = []
        for text, first in zip(texts, scores):
            answer = self._memo.get(text) if text in asked else None
            out.append(first if answer is None else self._merge(first, answer))
        return out

    def _merge(self, first: dict[str, float], answer: dict[str, float]) -> dict[str, float]:
        if any(math.isnan(answer.get(head, math.nan)) for head in self.thresholds):
            self.failed += 1
            return first
        return {
            head: onto_threshold(answer[head], self.second_threshold, threshold)
            for head, threshold in self.thresholds.items()
        }

    def similarity(self, sources: list[str], outputs: list[str]) -> list[float]:
        return self.first.similarity(sources, outputs)

    def categorise(self, texts: list[str]) -> list[str | None]:
        return self.first.categorise(texts)

    def resembles_harm(self, texts: list[str]) -> list[bool]:
        check = getattr(self.first, "resembles_harm", None)  # a first judge of its own may have none
        return check(texts) if check else [True] * len(texts)

    def assess(self, sources: list[str], candidates: list[str]) -> list[float] | None:
        assess = getattr(self.first, "assess", None)
        return assess(sources, candidates) if assess else None

    def is_unsafe(self, scores: dict[str, float], margin: Margin = 1.0) -> bool:
        return self.first.is_unsafe(scores, margin)
