"""screen -> rewrite -> verify -> choose: the one path every command walks.

``debias``, ``serve``, ``annotate`` and ``eval`` call :class:`Debiaser`; none keeps a copy of this
logic. The rule that matters most: the answer is never empty. When no candidate passes, the
record is flagged and keeps the least unsafe non-empty text (the original if nothing else).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from mbias import config
from mbias.engines import Engine, load_engine
from mbias.errors import MbiasError
from mbias.judges import Judge, load_judge
from mbias.prompts import clean_output, is_refusal, render
from mbias.records import Record, texts_to_records

# The reasons a record gives for not being rewritten; benchmarks count records by them.
REASON_CLEAN = "input judged clean"
REASON_NO_REWRITE = "no usable rewrite (empty or refusal)"
REASON_UNSAFE = "no candidate judged safe"
REASON_LOST_MEANING = "rewrite lost the meaning"
RETRIED_REASONS = (REASON_NO_REWRITE, REASON_UNSAFE, REASON_LOST_MEANING)


@dataclass
class DebiasSettings:
    """Knobs of one run; defaults suit the embedded model on a CPU."""

    batch_size: int = 32  # batched decoding: 2.5x (llama.cpp) to 5.8x (transformers) batch 1
    max_new_tokens: int = 160
    max_input_tokens: int = 2048  # the paper's max sequence length
    candidates: int = 1
    temperature: float = 0.0
    screen: bool = True  # skip generation for texts the judge finds clean
    # A text skips generation only when every score is below this share of the judge's threshold.
    # At 1.0 the screen let through 71 % of the mbias-test inputs the paper's GPT judge flagged and
    # left copies of 13 of 50 biased inputs in a blind read; at 0.35, 91 % (docs/RESULTS.md).
    screen_margin: float = 0.35
    min_similarity: float = 0.5  # below this a candidate has lost the message
    # When no candidate passes the judge, sample this many more and choose again (0: never).
    # Off by default: with the shipped adapter a blind read found no gain (the judge picks
    # candidates it likes, not safer ones) while a mixed batch job ran 2.4x slower (RESULTS.md).
    retries: int = 0
    retry_temperature: float = 0.8


class InputTooLong(MbiasError):
    pass


class Debiaser:
    """Rewrites biased or toxic text into a safe version that keeps its main information.

    >>> Debiaser().debias(["Old people can't learn new tech."])[0]["rewrite"]  # doctest: +SKIP
    """

    def __init__(
        self,
        engine: str | Engine | None = None,
        judge: str | Judge | None = None,
        prompt_style: str | None = None,
        settings: DebiasSettings | None = None,
    ):
        entry = config.resolve(engine if isinstance(engine, str) else config.default_engine_spec())
        self.engine: Engine = (
            engine if engine is not None and not isinstance(engine, str) else load_engine(entry.spec)
        )
        self.prompt_style = prompt_style or entry.prompt_style
        self.judge: Judge | None = load_judge(judge) if isinstance(judge, str) else judge
        self.settings = settings or DebiasSettings()

    # -- helpers -------------------------------------------------------------------------------
    def count_tokens(self, text: str) -> int:
        tokenizer = getattr(self.engine, "tokenizer", None)
        if tokenizer is None:
            return len(text) // 4 + 1  # rough, for HTTP engines whose tokenizer lives server-side
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    def input_limit(self) -> int:
        window = getattr(self.engine, "context_window", None) or self.settings.max_input_tokens
        return min(self.settings.max_input_tokens, max(16, window - self.settings.max_new_tokens))

    def check_length(self, text: str) -> int:
        tokens = self.count_tokens(text)
        if tokens > self.input_limit():
            raise InputTooLong(
                f"text is {tokens:,} tokens; the limit is {self.input_limit():,} "
                "(model window / --max-input-tokens): split it into paragraphs"
            )
        return tokens

    # -- the path ------------------------------------------------------------------------------
    def debias(self, texts: Iterable[str] | Iterable[Record]) -> list[Record]:
        items = list(texts)
        records = items if items and isinstance(items[0], dict) else texts_to_records(items)  # type: ignore[arg-type]
        return [r for batch in self.stream(records) for r in batch]

    def stream(self, records: list[Record]) -> Iterator[list[Record]]:
        """Yields finished batches in input order, so callers can write them as they go."""
        size = max(1, self.settings.batch_size)
        for start in range(0, len(records), size):
            yield self.process_batch(records[start : start + size])

    def process_batch(self, batch: list[Record]) -> list[Record]:
        out = [dict(r) for r in batch]
        todo: list[tuple[Record, int]] = []
        for record in out:
            text = record.get("text") or ""
            if not text.strip():
                record.update(rewrite=text, action="flagged", reason="empty input")
                continue
            try:
                todo.append((record, self.check_length(text)))
            except InputTooLong as exc:
                record.update(rewrite=text, action="flagged", reason=str(exc))
        if todo and self.judge is not None:
            todo = self._screen(todo)
        if todo:
            self._rewrite(todo)
        return out

    def _screen(self, todo: list[tuple[Record, int]]) -> list[tuple[Record, int]]:
        scores = self.judge.score([r["text"] for r, _ in todo])
        remaining = []
        for (record, tokens), score in zip(todo, scores):
            record.update({f"input_{k}": round(v, 4) for k, v in score.items()})
            if self.settings.screen and not self.judge.is_unsafe(score, margin=self.settings.screen_margin):
                record.update(rewrite=record["text"], action="kept", reason=REASON_CLEAN)
            else:
                remaining.append((record, tokens))
        return remaining

    def _rewrite(self, todo: list[tuple[Record, int]]) -> None:
        s = self.settings
        tokenizer = getattr(self.engine, "tokenizer", None)
        prompts = [render(r["text"], self.prompt_style, tokenizer) for r, _ in todo]
        budget = min(s.max_new_tokens, int(1.5 * max(t for _, t in todo)) + 24)
        raw = self.engine.generate(prompts, max_new_tokens=budget, temperature=s.temperature, n=s.candidates)
        tried = [[clean_output(o, r["text"]) for o in outputs] for (r, _), outputs in zip(todo, raw)]
        for (record, _), candidates in zip(todo, tried):
            self._choose(record, candidates)
        failed = [i for i, (r, _) in enumerate(todo) if r.get("reason") in RETRIED_REASONS]
        if not failed or s.retries < 1:
            return
        raw = self.engine.generate(
            [prompts[i] for i in failed], max_new_tokens=budget, temperature=s.retry_temperature, n=s.retries
        )
        for i, outputs in zip(failed, raw):
            record = todo[i][0]
            record.pop("reason")
            record["retried"] = True
            self._choose(record, tried[i] + [clean_output(o, record["text"]) for o in outputs])

    def _choose(self, record: Record, candidates: list[str]) -> None:
        usable = [c for c in dict.fromkeys(candidates) if c.strip() and not is_refusal(c)]
        if len(candidates) > 1:
            record["candidates"] = candidates
        if not usable:
            record.update(rewrite=record["text"], action="flagged", reason=REASON_NO_REWRITE)
            return
        if self.judge is None:
            record.update(rewrite=usable[0], action=_action(record["text"], usable[0]))
            return
        scores = self.judge.score(usable)
        similarity = self.judge.similarity([record["text"]] * len(usable), usable)
        ranked = sorted(
            zip(usable, scores, similarity),
            key=lambda c: (self.judge.is_unsafe(c[1]), c[2] < self.settings.min_similarity, -c[2]),
        )
        best, best_scores, best_similarity = ranked[0]
        record.update({k: round(v, 4) for k, v in best_scores.items()}, similarity=round(best_similarity, 4))
        if self.judge.is_unsafe(best_scores):
            record.update(rewrite=best, action="flagged", reason=REASON_UNSAFE)
        elif best_similarity < self.settings.min_similarity:
            record.update(rewrite=best, action="flagged", reason=REASON_LOST_MEANING)
        else:
            record.update(rewrite=best, action=_action(record["text"], best))


def _action(text: str, rewrite: str) -> str:
    """ "kept" when the model gave the text back (spacing aside): nothing was rewritten."""
    return "kept" if " ".join(rewrite.split()) == " ".join(text.split()) else "rewritten"


def debias(texts: Iterable[str], engine: str | None = None, **settings: Any) -> list[Record]:
    """One-call convenience: ``mbias.debias(["..."])``."""
    return Debiaser(engine, settings=DebiasSettings(**settings)).debias(texts)
