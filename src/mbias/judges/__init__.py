"""Judges score texts for toxicity and bias and measure how much meaning a rewrite keeps.

The Debiaser screens inputs and verifies candidates through this protocol only, so the embedded
encoder heads and an LLM-as-judge are interchangeable there.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol, runtime_checkable

# One margin for every head, or one per head (a head not named keeps 1.0: its threshold).
Margin = float | Mapping[str, float]


@runtime_checkable
class Judge(Protocol):
    def score(self, texts: list[str]) -> list[dict[str, float]]:
        """Per text: ``{"toxicity": p, "bias": p}``, probabilities in [0, 1]."""
        ...

    def similarity(self, sources: list[str], outputs: list[str]) -> list[float]:
        """Per pair: meaning retained, cosine similarity in [-1, 1] (1 = same meaning)."""
        ...

    def categorise(self, texts: list[str]) -> list[str | None]:
        """Per text: the harm it most resembles (one of ``mbias.judges.categories.CATEGORIES``),
        None where the judge cannot tell. Asked only about texts already judged unsafe."""
        ...

    def resembles_harm(self, texts: list[str]) -> list[bool]:
        """Per text: whether it clearly resembles one harm category (a group it targets, or an
        insult). The screen sends a suspect (under the threshold, over the margin) to the rewriter
        only when it does; True where the judge cannot tell."""
        ...

    def assess(self, sources: list[str], candidates: list[str]) -> list[float] | None:
        """Per (source, candidate) pair: the chance a blind reader finds the candidate both safe
        and faithful to its source: the Debiaser's order among a flagged unit's candidates, and
        among a suspect's those the judge treats alike; None where the judge has no such model
        (candidates are then ordered by the judge, then by similarity)."""
        ...

    def is_unsafe(self, scores: dict[str, float], margin: Margin = 1.0) -> bool:
        """True when any score is at or above its head's margin (``head_margin``) times the
        judge's calibrated threshold (a margin below 1 makes a screen that lets fewer unsafe texts
        through unread; per head, a screen that reads one head more closely than another)."""
        ...


def head_margin(margin: Margin, head: str) -> float:
    """The margin ``is_unsafe`` applies to ``head``."""
    return margin.get(head, 1.0) if isinstance(margin, Mapping) else margin


def score_worst_piece(
    judge: Judge, texts: list[str], pieces_of: Callable[[str], list[str]]
) -> list[tuple[dict[str, float], str]]:
    """Per text, each score's maximum over ``pieces_of(text)`` and the piece furthest over (or
    least under) a head's threshold, all pieces in one judge call."""
    thresholds = getattr(judge, "thresholds", None) or {}
    pieces = [pieces_of(t) for t in texts]
    scores = iter(judge.score([piece for p in pieces for piece in p]))
    rows = []

    def over(score: dict[str, float]) -> float:
        return max((v - thresholds.get(k, 0.5) for k, v in score.items()), default=0.0)

    for p in pieces:
        each = [next(scores) for _ in p]
        worst = max(range(len(p)), key=lambda i: over(each[i]))
        rows.append(({k: max(score[k] for score in each) for k in each[0]}, p[worst]))
    return rows


def score_by_sentence(judge: Judge, texts: list[str]) -> list[tuple[dict[str, float], str]]:
    """Per text, each score's maximum over its sentences (one judge call for all of them), and the
    sentence furthest over (or least under) a head's threshold.

    A whole-text score averages one biased sentence of an answer away (and the encoder reads only
    its first 256 tokens); the Debiaser screens per sentence, and whoever scores or evaluates text
    must see what it sees. A text of one sentence is scored as it is.
    """
    from mbias.segment import split_sentences

    def sentences(text: str) -> list[str]:
        found = [s.text for s in split_sentences(text)]
        return found if len(found) > 1 else [text]

    return score_worst_piece(judge, texts, sentences)


def load_judge(spec: str = "embedded") -> Judge:
    """``embedded`` (encoder + shipped heads), ``embedded:PATH`` (heads from ``mbias train-judges
    --output PATH``), ``llm:<engine spec>``, or ``embedded+llm:<engine spec>`` (the LLM re-scores
    only the embedded judge's uncertain band)."""
    if spec.startswith("embedded+llm:"):
        from mbias.judges.cascade import CascadeJudge
        from mbias.judges.embedded import EmbeddedJudge
        from mbias.judges.llm import LLMJudge

        return CascadeJudge(EmbeddedJudge(), LLMJudge(spec[len("embedded+llm:") :]))
    if spec == "embedded" or spec.startswith("embedded:"):  # embedded:PATH, heads a user trained
        from pathlib import Path

        from mbias.judges.embedded import EmbeddedJudge

        path = Path(spec.partition(":")[2]) if ":" in spec else None
        return EmbeddedJudge(heads_path=path / "heads.json" if path and path.is_dir() else path)
    if spec.startswith("llm:"):
        from mbias.judges.llm import LLMJudge

        return LLMJudge(spec[4:])
    from mbias.errors import MbiasError

    raise MbiasError(
        f"unknown judge {spec!r}; use 'embedded', 'embedded:PATH', 'llm:SPEC' or 'embedded+llm:SPEC'"
    )
