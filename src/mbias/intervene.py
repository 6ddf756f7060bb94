"""segment -> screen -> rewrite -> verify -> choose -> splice: the one path every command walks.

``debias``, ``serve``, ``annotate``, ``eval`` and ``probe`` call :class:`Debiaser`; none keeps a
copy of this logic. A text is cut into units: its sentences (``granularity`` ``sentence``, and
``auto``, the default), or the whole text (``text``). Every unit of every record in a batch is
screened in one judge call; only flagged units are rewritten, each with its neighbours as
context, and each rewrite goes back at its own offsets, so everything else stays byte-identical
(an LLM answer's code, lists and clean sentences). The record lists what changed in ``spans``.

The rule that matters most: the answer is never empty. When no candidate passes, the unit is
flagged and keeps the least unsafe non-empty text (the original if nothing else).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from mbias import config
from mbias.engines import Engine, check_spec, load_engine
from mbias.errors import MbiasError
from mbias.judges import Judge, load_judge
from mbias.profile import stage
from mbias.prompts import STYLES, Context, clean_output, is_refusal, render, repeats_itself
from mbias.records import Record, as_records

# The reasons a record or span gives for not being rewritten; benchmarks count records by them.
REASON_CLEAN = "input judged clean"
REASON_NO_REWRITE = "no usable rewrite (empty, refusal or a decoding loop)"
REASON_UNSAFE = "no candidate judged safe"
REASON_LOST_MEANING = "rewrite lost the meaning"
REASON_PROTECTED = "holds code or a URL: not sent to the model"
REASON_NO_PROSE = "no prose to check (code, tables or markup only)"
REASON_SUSPECT_KEPT = "under the threshold, and no rewrite cleared the screen"
# Several candidates, the reader heads chose one the judge flags over one it passes: a deliberate
# choice, so neither retried nor escalated (the judge agrees with readers on rewrites at kappa 0-0.3).
REASON_READERS_PICK = "the judge flags the rewrite readers would likeliest accept"
RETRIED_REASONS = (REASON_NO_REWRITE, REASON_UNSAFE, REASON_LOST_MEANING)
GRANULARITIES = ("auto", "sentence", "text")
# Screened batches whose flagged units may wait for later batches' before one generate call: a
# bound on the records a job holds unwritten (with batch_size 32, 256 records).
MAX_WAITING_BATCHES = 8


@dataclass
class DebiasSettings:
    """Knobs of one run; defaults suit the embedded model on a CPU."""

    batch_size: int = 32  # batched decoding: 2.5x (llama.cpp) to 5.8x (transformers) batch 1
    # Cap on new tokens for a whole text (granularity "text"). A sentence's budget is set by its
    # own length alone, so no sentence of an answer is ever cut short.
    max_new_tokens: int = 160
    max_input_tokens: int = 2048  # the paper's max sequence length
    # Candidates per rewrite: at temperature 0 the greedy rewrite and ``candidates - 1`` samples at
    # ``sample_temperature``; the judge and its reader heads keep the best (see Debiaser._choose).
    candidates: int = 1
    temperature: float = 0.0
    screen: bool = True  # skip generation for units the judge finds clean
    # A unit skips generation only when every score is under its threshold and the scores of
    # ``screen_margin_heads`` are under this share of theirs (at most 1). At 1.0 the screen let
    # through 71 % of the mbias-test inputs the paper's GPT judge flagged and left copies of 13 of
    # 50 biased inputs in a blind read; at 0.35, 91 % (docs/lab/results-log.md).
    screen_margin: float = 0.35
    # The heads whose scores the margin applies to; any other head catches a unit only at its
    # threshold. Under the toxicity threshold the band held more fair sentences than unsafe ones
    # (held-out bias-set pairs 4.6 % of fair against 0.4 % of biased; ToxiGen 3.6 against 2.6 %)
    # and its rewrites broke clean advice ("never push into pain" -> "push into pain"); without
    # it the screen still sends 91.5 % of the GPT-flagged mbias-test inputs (docs/lab/results-log.md).
    screen_margin_heads: tuple[str, ...] = ("bias",)
    min_similarity: float = 0.5  # below this a candidate has lost the message
    # When no candidate passes the judge, sample this many more and choose again (0: never).
    # Off by default: with the shipped adapter a blind read found no gain (the judge picks
    # candidates it likes, not safer ones) while a mixed batch job ran 2.4x slower (docs/lab/results-log.md).
    retries: int = 0
    # The temperature of the candidates sampled beside the greedy one and of retries.
    sample_temperature: float = 0.7
    # An engine (short name or spec, e.g. "mbias-1.5b") that rewrites again only the units the
    # engine failed on (flagged: judged unsafe, meaning lost, no usable rewrite) or rewrote into
    # text the screen would still catch (under the threshold, over the margin); the judge then
    # chooses among both engines' candidates. Loaded on the first such unit, so a run without one
    # never pays for it. None: no second engine.
    escalate: str | None = None
    # "sentence": screen and rewrite each sentence; "text": the whole text as one unit; "auto"
    # (default): per sentence, which for a one-sentence text is the same as the whole text.
    granularity: str = "auto"
    # Neighbouring sentences shown to the model around a sentence; None: as the engine's entry
    # says (only an adapter trained with context gets it, so prompts match training).
    context: bool | None = None

    def __post_init__(self) -> None:
        """Refuses values that would fail deep inside a job, or quietly do something else (a
        negative token budget cut every rewrite to a few characters)."""
        if isinstance(self.screen_margin_heads, str):  # ("bias") is a string, not a one-head tuple
            self.screen_margin_heads = (self.screen_margin_heads,)
        if self.granularity not in GRANULARITIES:
            raise MbiasError(f"granularity must be one of {', '.join(GRANULARITIES)}")
        if not 0.0 < self.screen_margin <= 1.0:  # also false for NaN
            raise MbiasError(f"screen_margin must be in (0, 1], not {self.screen_margin}")
        for name in ("batch_size", "max_new_tokens", "max_input_tokens", "candidates"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise MbiasError(f"{name} must be a whole number of at least 1, not {getattr(self, name)!r}")
        if not isinstance(self.retries, int) or self.retries < 0:
            raise MbiasError(f"retries must be a whole number of at least 0, not {self.retries!r}")
        for name in ("temperature", "sample_temperature"):
            if not 0.0 <= getattr(self, name) < math.inf:
                raise MbiasError(f"{name} must be 0 or more, not {getattr(self, name)}")
        if self.sample_temperature == 0 and (
            self.retries > 0 or (self.candidates > 1 and self.temperature == 0)
        ):
            raise MbiasError("sample_temperature must be above 0 to sample candidates or retries")
        if not 0.0 <= self.min_similarity <= 1.0:
            raise MbiasError(f"min_similarity must be in [0, 1], not {self.min_similarity}")

    @property
    def screen_band(self) -> dict[str, float]:
        """The screen's margin per head, as ``Judge.is_unsafe`` takes it: ``screen_margin`` on
        ``screen_margin_heads``, every other head at its threshold."""
        return dict.fromkeys(self.screen_margin_heads, self.screen_margin)


class InputTooLong(MbiasError):
    pass


class EscalationUnavailable(MbiasError):
    """The escalation engine could not be loaded: the job's fault, not a record's, so a batch that
    hits it stops instead of being retried record by record."""


@dataclass
class Unit:
    """One piece of one record that is screened and maybe rewritten: a sentence or the whole text."""

    record: Record
    start: int
    end: int
    text: str
    context: Context | None = None
    rewritable: bool = True
    tokens: int | None = None  # counted when the unit is rewritten (or when it may be too long)
    before: dict[str, float] = field(default_factory=dict)
    after: dict[str, float] = field(default_factory=dict)
    rewrite: str | None = None
    action: str = "kept"
    reason: str | None = None
    similarity: float | None = None
    candidates: list[str] = field(default_factory=list)
    retried: bool = False
    escalated: bool = False
    pieces: list[Unit] = field(default_factory=list)  # its flagged pieces, when only they are rewritten


@dataclass
class _Screened:
    """A batch between screen and rewrite: its records (copies), their units, the units to rewrite."""

    out: list[Record]
    units: list[list[Unit]]
    todo: list[Unit]


class Debiaser:
    """Rewrites biased or toxic text into a safe version that keeps its main information.

    The embedded judge screens and verifies by default, as the CLI does; ``judge="none"`` turns
    both off (every unit is rewritten and nothing is verified).

    >>> Debiaser().debias(["Old people can't learn new tech."])[0]["rewrite"]  # doctest: +SKIP
    """

    def __init__(
        self,
        engine: str | Engine | None = None,
        judge: str | Judge | None = "default",
        prompt_style: str | None = None,
        settings: DebiasSettings | None = None,
        engine_options: dict[str, Any] | None = None,
    ):
        """``engine_options`` go to the engine when this builds it from a name or spec (e.g.
        ``threads`` for llama.cpp, where several Debiasers share a machine)."""
        for name, given, needs in (("engine", engine, "generate"), ("judge", judge, "score")):
            if not (given is None or isinstance(given, str) or hasattr(given, needs)):
                raise MbiasError(f"{name} must be a name, a spec or an object with .{needs}(), not {given!r}")
        if settings is not None and not isinstance(settings, DebiasSettings):
            raise MbiasError(f"settings must be a DebiasSettings, not {type(settings).__name__}")
        if prompt_style is not None and prompt_style not in STYLES:
            raise MbiasError(f"prompt_style must be one of {', '.join(STYLES)}, not {prompt_style!r}")
        entry = config.resolve(engine if isinstance(engine, str) else config.default_engine_spec())
        with stage("load"):
            self.engine: Engine = (
                engine
                if engine is not None and not isinstance(engine, str)
                else load_engine(entry.spec, **(engine_options or {}))
            )
        self.prompt_style = prompt_style or entry.prompt_style
        if isinstance(judge, str):  # "default" (MBIAS_JUDGE, else embedded), "none", or a spec
            judge = config.default_judge("" if judge == "default" else judge)
        self.judge: Judge | None = load_judge(judge) if isinstance(judge, str) else judge
        self.settings = settings or DebiasSettings()
        known = getattr(self.judge, "thresholds", None)
        unknown = set(self.settings.screen_margin_heads) - set(known) if isinstance(known, dict) else set()
        if unknown:
            raise MbiasError(f"screen_margin_heads {sorted(unknown)}: the judge's heads are {sorted(known)}")
        context = self.settings.context
        self.use_context = entry.context if context is None else context
        self.engine_options = engine_options or {}
        # the scheme of the engine this built (llamacpp, hf, ...); None for an engine passed in
        self.engine_kind = entry.spec.partition(":")[0] if engine is None or isinstance(engine, str) else None
        self._escalation: tuple[Engine, str, bool] | EscalationUnavailable | None = None
        self._escalation_entry: config.ModelEntry | None = None
        if self.settings.escalate is not None:  # its form now, its weights when first needed
            if not self.settings.escalate.strip():
                raise MbiasError("escalate names no engine: give a short name or spec, or leave it out")
            self._escalation_entry = config.resolve(self.settings.escalate)
            check_spec(self._escalation_entry.spec)

    # -- helpers -------------------------------------------------------------------------------
    def count_tokens(self, text: str) -> int:
        tokenizer = getattr(self.engine, "tokenizer", None)
        if tokenizer is None:
            return len(text) // 4 + 1  # rough, for HTTP engines whose tokenizer lives server-side
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    def input_limit(self) -> int:
        window = getattr(self.engine, "context_window", None) or self.settings.max_input_tokens
        return min(self.settings.max_input_tokens, max(16, window - self.settings.max_new_tokens))

    def check_length(self, text: str) -> int | None:
        """The text's token count, or None when its UTF-8 length already proves it fits: with
        byte-level BPE (Qwen) or SentencePiece with byte fallback (Gemma, Mistral) a token covers at
        least one byte (one more for a leading word marker); a tokenizer that expands characters
        (NFKC) could exceed the bound. Counting every clean sentence of every answer with the
        model's tokenizer cost 2 ms an answer."""
        if len(text.encode("utf-8")) + 1 <= self.input_limit():
            return None
        tokens = self.count_tokens(text)
        if tokens > self.input_limit():
            raise InputTooLong(
                f"text is {tokens:,} tokens; the limit is {self.input_limit():,} "
                "(model window / --max-input-tokens): split it into paragraphs"
            )
        return tokens

    def units(self, record: Record) -> list[Unit]:
        """The pieces of one record's text the path screens: its sentences, or the whole text."""
        text = record.get("text") or ""
        if self.settings.granularity == "text":
            return [Unit(record, 0, len(text), text)]
        from mbias.segment import context_of, split_sentences

        sentences = split_sentences(text)
        return [
            Unit(
                record,
                s.start,
                s.end,
                s.text,
                context=context_of(sentences, i) if self.use_context and len(sentences) > 1 else None,
                rewritable=s.rewritable,
            )
            for i, s in enumerate(sentences)
        ]

    # -- the path ------------------------------------------------------------------------------
    def debias(self, texts: Iterable[str] | Iterable[Record]) -> list[Record]:
        """One record per text (or per record given), in order; see ``records.as_records``."""
        return [r for batch in self.stream(as_records(texts)) for r in batch]

    def stream(self, records: list[Record]) -> Iterator[list[Record]]:
        """Yields finished batches in input order, so callers can write them as they go.

        Each batch of ``batch_size`` records is screened at once; its flagged units then wait for
        the next batches' until ``batch_size`` units (the decoder's rows) are waiting, or
        ``MAX_WAITING_BATCHES`` batches, so mostly clean answers share one generate call instead
        of paying one each (100 clean long answers: 4 calls of 2-11 rows took 3.2 s, one call of 19
        rows 2.0 s). A batch that fails is done again record by record (``process_batch``)."""
        size = max(1, self.settings.batch_size)
        waiting: list[tuple[list[Record], _Screened]] = []
        for start in range(0, len(records), size):
            batch = records[start : start + size]
            try:
                waiting.append((batch, self._screen_batch(batch)))
            except EscalationUnavailable:
                raise
            except Exception:  # done again below, record by record, in input order
                yield from self._complete_waiting(waiting)
                waiting = []
                yield self.process_batch(batch)
                continue
            while waiting and not waiting[0][1].todo:  # nothing to rewrite: out at once, in order
                yield from self._complete_waiting(waiting[:1])
                waiting = waiting[1:]
            rows = sum(len(screened.todo) for _, screened in waiting)
            if rows >= size or len(waiting) >= MAX_WAITING_BATCHES:
                yield from self._complete_waiting(waiting)
                waiting = []
        yield from self._complete_waiting(waiting)

    def _complete_waiting(self, waiting: list[tuple[list[Record], _Screened]]) -> Iterator[list[Record]]:
        """Rewrites the waiting batches' units in one go and yields each batch finished; when that
        fails, each batch goes through ``process_batch`` again."""
        if not waiting:
            return
        try:
            self._complete([screened for _, screened in waiting])
        except EscalationUnavailable:
            raise
        except Exception:
            for batch, _ in waiting:
                yield self.process_batch(batch)
            return
        for _, screened in waiting:
            yield screened.out

    def process_batch(self, batch: list[Record]) -> list[Record]:
        """The batch's records, finished, in input order. When the batch fails, each record is tried
        alone: a record that fails by itself comes back unchanged and flagged with the error as its
        reason, so one bad row stops no job and loses no text. When every record fails alone the
        fault is not theirs (the engine or the judge is down) and the first error goes to the
        caller."""
        try:
            return self._process(batch)
        except EscalationUnavailable:
            raise
        except Exception as first:
            if len(batch) == 1:
                raise
            results: list[Record] = []
            failures = 0
            for record in batch:
                try:
                    results.extend(self._process([record]))
                except EscalationUnavailable:
                    raise
                except Exception as exc:
                    failures += 1
                    reason = f"error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                    text = record.get("text") or ""
                    results.append(
                        {**record, "rewrite": text, "action": "flagged", "reason": reason, "spans": []}
                    )
            if failures == len(batch):
                raise first
            return results

    def _process(self, batch: list[Record]) -> list[Record]:
        screened = self._screen_batch(batch)
        self._complete([screened])
        return screened.out

    def _screen_batch(self, batch: list[Record]) -> _Screened:
        """Copies of a batch's records, cut into units and screened in one judge call; ``todo``
        holds the units to rewrite."""
        out = [dict(r) for r in batch]
        per_record: list[list[Unit]] = []
        todo: list[Unit] = []
        with stage("segment"):
            for record in out:
                units = [] if not (record.get("text") or "").strip() else self.units(record)
                per_record.append(units)
                for unit in units:
                    try:
                        unit.tokens = self.check_length(unit.text)
                        todo.append(unit)
                    except InputTooLong as exc:
                        unit.action, unit.reason = "flagged", str(exc)
        if todo and self.judge is not None:
            with stage("screen"):
                todo = self._screen(todo)
        for unit in todo:
            if not unit.rewritable and self.judge is not None:
                if self.judge.is_unsafe(unit.before):  # judged unsafe, but it cannot be rewritten
                    unit.action, unit.reason = "flagged", REASON_PROTECTED
                else:  # a suspect keeps its text unless a rewrite clears the screen, and none can be tried
                    unit.action = "kept"
                    unit.reason = REASON_SUSPECT_KEPT if self.settings.screen else REASON_PROTECTED
        return _Screened(out, per_record, [u for u in todo if u.rewritable])

    def _complete(self, batches: list[_Screened]) -> None:
        """Rewrites the units of screened batches together, then splices each record."""
        todo = [unit for screened in batches for unit in screened.todo]
        if todo:
            self._rewrite(todo)
        with stage("splice"):
            for screened in batches:
                for record, units in zip(screened.out, screened.units):
                    self._finish(record, units)

    def _screen(self, todo: list[Unit]) -> list[Unit]:
        """Scores every unit in one judge call and returns the units to rewrite. A sentence the
        segmenter glued to another (``segment.pieces``) is scored piece by piece as well, so neither
        averages the other away; when the screen passes some of its pieces and not others, only
        the others are rewritten and the rest stays byte-identical."""
        from mbias.segment import pieces

        split = self.settings.screen and self.settings.granularity != "text"
        # per unit: the whole, the pieces it may be rewritten in, then any other pieces the screen reads
        spans = []
        for unit in todo:
            rewritable = pieces(unit.text, splice=True) if split else []
            others = [p for p in (pieces(unit.text) if split else []) if p not in rewritable]
            spans.append(([(0, len(unit.text)), *rewritable, *others], len(rewritable)))
        read = [[u.text[a:b] for a, b in sp] for u, (sp, _) in zip(todo, spans)]
        scores = iter(self.judge.score([text for texts in read for text in texts]))
        # decided on the scores the record reports (4 decimals), as _bar and the annotator read them
        own_scores = [[{k: round(v, 4) for k, v in next(scores).items()} for _ in texts] for texts in read]
        # what only the margin catches must also resemble a harm (the judge's category head)
        mild = [t for texts, own in zip(read, own_scores) for t, s in zip(texts, own) if self._mild(s)]
        check = getattr(self.judge, "resembles_harm", None)
        harm_like = dict(zip(mild, check(mild))) if mild and check and self.settings.screen else {}

        def caught(text: str, score: dict[str, float]) -> bool:
            return self.judge.is_unsafe(score) or (self._caught(score) and harm_like.get(text, True))

        remaining = []
        for unit, (sp, n), texts, own in zip(todo, spans, read, own_scores):
            unit.before = {k: max(s[k] for s in own) for k in own[0]}
            if not self.settings.screen or any(caught(t, s) for t, s in zip(texts, own)):
                flagged = [
                    self._piece(unit, a, b, score)
                    for (a, b), text, score in zip(sp[1 : 1 + n], texts[1 : 1 + n], own[1 : 1 + n])
                    if caught(text, score)
                ]
                # When the whole is over the threshold, a piece must be too: harm that only the
                # pieces together carry ("... women at the wheel: They cannot park.") stays one unit.
                carried = not self.judge.is_unsafe(unit.before) or any(
                    self.judge.is_unsafe(piece.before) for piece in flagged
                )
                unit.pieces = flagged if 0 < len(flagged) < n and carried else []
                remaining.extend(unit.pieces or [unit])
            else:
                unit.reason = REASON_CLEAN
        return remaining

    def _mild(self, scores: dict[str, float]) -> bool:
        """Caught by the screen's margin only: a suspect, under every threshold."""
        return self._caught(scores) and not self.judge.is_unsafe(scores)

    def _caught(self, scores: dict[str, float]) -> bool:
        """Whether the screen stops these scores: any head at its threshold, or one of
        ``screen_margin_heads`` at ``screen_margin`` times its threshold."""
        return self.judge.is_unsafe(scores, margin=self.settings.screen_band)

    def _piece(self, unit: Unit, start: int, end: int, score: dict[str, float]) -> Unit:
        """A flagged piece of ``unit`` as a unit of its own, with its unit's other text as context."""
        from mbias.segment import holds_code

        text = unit.text[start:end]
        context = None
        if unit.context is not None:
            before, after = unit.text[:start].strip(), unit.text[end:].strip()
            context = (before or unit.context[0], after or unit.context[1])
        return Unit(
            unit.record,
            unit.start + start,
            unit.start + end,
            text,
            context=context,
            rewritable=unit.rewritable or not holds_code(text),
            before={k: round(v, 4) for k, v in score.items()},
        )

    def _budget(self, units: list[Unit]) -> int:
        for unit in units:
            if unit.tokens is None:
                unit.tokens = self.count_tokens(unit.text)
        longest = int(1.5 * max(u.tokens for u in units)) + 24
        return min(self.settings.max_new_tokens, longest) if self.settings.granularity == "text" else longest

    def _rewrite(self, todo: list[Unit]) -> None:
        s = self.settings
        tokenizer = getattr(self.engine, "tokenizer", None)
        prompts = [render(u.text, self.prompt_style, tokenizer, context=u.context) for u in todo]
        budget = self._budget(todo)
        raw = self._generate(self.engine, prompts, budget)
        tried = [[clean_output(o, u.text) for o in outputs] for u, outputs in zip(todo, raw)]
        self._choose(todo, tried)
        failed = [i for i, u in enumerate(todo) if u.reason in RETRIED_REASONS]
        if failed and s.retries > 0:
            with stage("generate"):
                raw = self.engine.generate(
                    [prompts[i] for i in failed],
                    max_new_tokens=budget,
                    temperature=s.sample_temperature,
                    n=s.retries,
                )
            for i in failed:
                todo[i].retried = True
            again = [tried[i] + [clean_output(o, todo[i].text) for o in outs] for i, outs in zip(failed, raw)]
            self._choose([todo[i] for i in failed], again)
        if s.escalate:
            self._escalate([u for u in todo if u.reason in RETRIED_REASONS or self._doubtful(u)], budget)

    def _generate(self, engine: Engine, prompts: list[str], budget: int) -> list[list[str]]:
        """``candidates`` outputs per prompt: at temperature 0 the greedy one first, then samples at
        ``sample_temperature``, so asking for more candidates never loses the greedy rewrite."""
        s = self.settings
        with stage("generate"):
            if s.temperature > 0 or s.candidates == 1:
                return engine.generate(
                    prompts, max_new_tokens=budget, temperature=s.temperature, n=s.candidates
                )
            greedy = engine.generate(prompts, max_new_tokens=budget, temperature=0.0, n=1)
            sampled = engine.generate(
                prompts, max_new_tokens=budget, temperature=s.sample_temperature, n=s.candidates - 1
            )
        return [first + more for first, more in zip(greedy, sampled)]

    def _doubtful(self, unit: Unit) -> bool:
        """Whether a flagged unit's accepted rewrite is one the screen would still send to the
        rewriter: under the threshold, over the margin. Escalating these too changed the output on
        103 of 560 held-out texts, and two blind readers found 6 and 5 of them still unsafe
        against 20 and 19 before (docs/lab/results-log.md, "Escalating doubtful rewrites")."""
        return (
            self.judge is not None
            and unit.action == "rewritten"
            and bool(unit.before and unit.after)
            and self.judge.is_unsafe(unit.before)
            and self._caught(unit.after)
        )

    def _escalate(self, units: list[Unit], budget: int) -> None:
        """The units both tries left flagged or doubtful, rewritten by the escalation engine with
        its own prompt; the judge chooses again among every candidate of each, preferring one the
        screen would let through, so a worse second answer changes nothing."""
        if not units:
            return
        engine, style, context = self.escalation_engine()
        tokenizer = getattr(engine, "tokenizer", None)
        prompts = [render(u.text, style, tokenizer, context=u.context if context else None) for u in units]
        raw = self._generate(engine, prompts, budget)
        first = [list(u.candidates) for u in units]
        chosen = [(u.rewrite, u.after, u.similarity, u.action, u.reason) for u in units]
        second = [[clean_output(o, u.text) for o in outs] for u, outs in zip(units, raw)]
        self._choose(units, [a + b for a, b in zip(first, second)], clear_first=True)
        for unit, mine, theirs, before in zip(units, first, second, chosen):
            # credit the engine whose rewrite was kept; when it is the first's, its first choice
            # stands (clear_first only decides between the two engines' answers)
            unit.escalated = unit.rewrite is not None and unit.rewrite in theirs and unit.rewrite not in mine
            if not unit.escalated:
                unit.rewrite, unit.after, unit.similarity, unit.action, unit.reason = before

    def escalation_engine(self) -> tuple[Engine, str, bool]:
        """(engine, prompt style, whether it takes neighbouring sentences) of ``settings.escalate``,
        loaded once: on the first failure, or by a server before it reports ready. It gets the first
        engine's options (a Ray worker's thread cap) only when both are of one kind. A load that
        fails is not tried again: every later call raises the same EscalationUnavailable."""
        entry = self._escalation_entry
        if entry is None:
            raise MbiasError("no escalation engine: set DebiasSettings.escalate")
        if self._escalation is None:
            same_kind = entry.spec.partition(":")[0] == self.engine_kind
            try:
                with stage("load"):
                    engine = load_engine(entry.spec, **(self.engine_options if same_kind else {}))
                self._escalation = (engine, entry.prompt_style, entry.context)
            except Exception as exc:
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                self._escalation = EscalationUnavailable(f"--escalate {self.settings.escalate}: {reason}")
        if isinstance(self._escalation, EscalationUnavailable):
            raise self._escalation
        return self._escalation

    def _choose(self, units: list[Unit], candidates: list[list[str]], clear_first: bool = False) -> None:
        """Verify every unit's candidates in one judge call and keep each unit's best. With reader
        heads and several candidates, a flagged unit keeps, among those that keep the message
        (``min_similarity``), the one a blind reader is likeliest to find safe and faithful
        (``Judge.assess``), even over one the judge passes (reason ``REASON_READERS_PICK``: the
        judge agrees with readers on rewrites at kappa 0-0.3; with its verdict first, best of five
        kept the meaning of 34 of 80 bias-set texts against greedy's 46 in a blind read).
        Otherwise (a suspect, no reader heads, or between two engines' candidates): safe first,
        then meaning kept, then (``clear_first``) one the screen would let through, then the
        readers' order or the most similar (docs/lab/results-log.md, "Reader heads choose among
        candidates")."""
        # a candidate with the original's words (punctuation or case aside) is the original given
        # back: verified as the original, it cannot pass by a question mark turned into a full stop
        usable = [
            list(
                dict.fromkeys(
                    u.text if _same_words(u.text, c) else c for c in cs if c.strip() and not is_refusal(c)
                )
            )
            for u, cs in zip(units, candidates)
        ]
        if self.judge is not None:  # verifying: a decoding loop is not a rewrite either
            usable = [[c for c in ok if not repeats_itself(c, u.text)] for u, ok in zip(units, usable)]
        for unit, tried, ok in zip(units, candidates, usable):
            unit.candidates, unit.rewrite, unit.reason = tried, None, None
            if not ok and self.judge is not None and self._bar(unit) < 1.0:
                # a suspect with nothing usable is as clean as one whose rewrites the screen
                # refused: kept, and not retried (only failures of flagged units are)
                unit.action, unit.reason = "kept", REASON_SUSPECT_KEPT
            elif not ok:
                unit.action, unit.reason = "flagged", REASON_NO_REWRITE
            elif self.judge is None:
                unit.rewrite, unit.action = ok[0], _action(unit.text, ok[0])
        if self.judge is None:
            return
        pairs = [(unit, c) for unit, ok in zip(units, usable) for c in ok]
        if not pairs:
            return
        with stage("verify"):
            scores = self.judge.score([c for _, c in pairs])
            similarity = self.judge.similarity([u.text for u, _ in pairs], [c for _, c in pairs])
            assess = getattr(self.judge, "assess", None)
            # with one candidate each there is no order to find; escalation's choice between two
            # engines keeps the order its blind read measured
            several = any(len(ok) > 1 for ok in usable) and not clear_first
            readers = (
                assess([u.text for u, _ in pairs], [c for _, c in pairs]) if assess and several else None
            )
        order = similarity if readers is None else readers
        ranked: dict[int, list[tuple[str, dict[str, float], float, float]]] = {}
        for (unit, candidate), score, sim, rank in zip(pairs, scores, similarity, order):
            ranked.setdefault(id(unit), []).append((candidate, score, sim, rank))
        for unit in units:
            if id(unit) not in ranked:
                continue
            bar = self._bar(unit)
            # a flagged unit's candidates in the readers' order (a suspect's must still clear the
            # screen, or it keeps its own text); otherwise the judge's verdict comes first
            by_readers = readers is not None and bar >= 1.0
            best, best_scores, best_similarity, _ = min(
                ranked[id(unit)],
                key=lambda c: (
                    (c[2] < self.settings.min_similarity, -c[3])
                    if by_readers
                    else (
                        self.judge.is_unsafe(c[1], margin=bar),
                        c[2] < self.settings.min_similarity,
                        clear_first and self._caught(c[1]),
                        -c[3],
                    )
                ),
            )
            if bar < 1.0 and self.judge.is_unsafe(best_scores, margin=bar):
                unit.action, unit.reason = "kept", REASON_SUSPECT_KEPT
                continue
            unit.rewrite = best
            unit.after = {k: round(v, 4) for k, v in best_scores.items()}
            unit.similarity = round(best_similarity, 4)
            if self.judge.is_unsafe(best_scores):
                passed = any(
                    not self.judge.is_unsafe(c[1]) and c[2] >= self.settings.min_similarity
                    for c in ranked[id(unit)]
                )
                unit.action, unit.reason = "flagged", REASON_READERS_PICK if passed else REASON_UNSAFE
            elif best_similarity < self.settings.min_similarity:
                unit.action, unit.reason = "flagged", REASON_LOST_MEANING
            else:
                unit.action = _action(unit.text, best)

    def _bar(self, unit: Unit) -> float:
        """The margin a unit's rewrite must get under. A unit the judge finds unsafe needs a rewrite
        under the threshold. A suspect (under the threshold, caught only by the screen's margin)
        keeps its own text unless a rewrite gets under the margin on every head: a rewrite the
        judge finds hardly safer than a text it already passes, or more toxic, only risks the meaning.
        On the long-answer benchmark this kept 18 of 36 changes to clean sentences and lost 2 of
        275 biased ones (docs/lab/results-log.md)."""
        if not self.settings.screen or not unit.before or self.judge.is_unsafe(unit.before):
            return 1.0
        return self.settings.screen_margin

    # -- splice and explain ----------------------------------------------------------------------
    def _finish(self, record: Record, units: list[Unit]) -> None:
        """Splice each unit's rewrite back and set the record's rewrite, action, reason and spans."""
        text = record.get("text") or ""
        alone = len(units) == 1 and not units[0].pieces  # one unit, rewritten whole
        units = [piece for unit in units for piece in unit.pieces or [unit]]
        if not text.strip():
            record.update(rewrite=text, action="flagged", reason="empty input", spans=[])
            return
        whole = self.settings.granularity == "text"
        replacements = {
            (u.start, u.end): u.rewrite if whole else fit_to_sentence(u.text, u.rewrite)
            for u in units
            if u.rewrite is not None and u.action != "kept"
        }
        from mbias.segment import splice

        record["rewrite"] = splice(text, replacements) if replacements else text
        flagged = [u for u in units if u.action == "flagged"]
        changed = [u for u in units if u.action == "rewritten"]
        if not units:
            record.update(action="kept", reason=REASON_NO_PROSE)
        elif flagged:
            record.update(action="flagged", reason=flagged[0].reason)
        elif changed:
            record["action"] = "rewritten"
        else:
            record["action"] = "kept"
            reasons = {u.reason for u in units}
            if reasons == {REASON_CLEAN}:
                record["reason"] = REASON_CLEAN
            elif REASON_SUSPECT_KEPT in reasons:
                record["reason"] = REASON_SUSPECT_KEPT
        if record.get("reason") is None:
            record.pop("reason", None)
        self._scores(record, units)
        record["spans"] = self._spans(units, replacements)
        if alone and len(units[0].candidates) > 1:
            record["candidates"] = units[0].candidates
        elif units and not alone and self.settings.candidates > 1:
            record["candidates"] = _spliced_candidates(text, units)
        if any(u.retried for u in units):
            record["retried"] = True
        if any(u.escalated for u in units):
            record["escalated"] = True

    def _scores(self, record: Record, units: list[Unit]) -> None:
        """Record-level figures: each score's maximum over units, before and after."""
        scored = [u for u in units if u.before]
        for name in scored[0].before if scored else ():
            record[f"input_{name}"] = max(u.before[name] for u in scored)
        verified = [u for u in units if u.after]
        if verified:
            for name in verified[0].after:
                record[name] = max((u.after or u.before).get(name, 0.0) for u in units if u.after or u.before)
            record["similarity"] = min(u.similarity for u in verified if u.similarity is not None)

    def _spans(self, units: list[Unit], replacements: dict[tuple[int, int], str]) -> list[dict[str, Any]]:
        """One entry per changed or flagged unit: where it was, what it became, why, and which harm."""
        shown = [u for u in units if u.action != "kept" or (u.start, u.end) in replacements]
        category = dict(zip(((u.start, u.end) for u in shown), self._categories([u.text for u in shown])))
        spans, shift = [], 0
        for unit in sorted(units, key=lambda u: u.start):
            new = replacements.get((unit.start, unit.end), unit.text)
            if (unit.start, unit.end) in category:
                span: dict[str, Any] = {
                    "start": unit.start,
                    "end": unit.end,
                    "output_start": unit.start + shift,
                    "output_end": unit.start + shift + len(new),
                    "original": unit.text,
                    "rewrite": new,
                    "action": unit.action,
                    "category": category[(unit.start, unit.end)],
                    "before": unit.before,
                    "after": unit.after,
                }
                if unit.reason:
                    span["reason"] = unit.reason
                if unit.similarity is not None:
                    span["similarity"] = unit.similarity
                if unit.escalated:
                    span["escalated"] = True
                spans.append(span)
            shift += len(new) - (unit.end - unit.start)
        return spans

    def _categories(self, texts: list[str]) -> list[str | None]:
        categorise = getattr(self.judge, "categorise", None)
        if not texts or categorise is None:
            return [None] * len(texts)
        return categorise(texts)


_TERMINAL = re.compile("[.!?\u2026][\"'\u201d\u2019)\\]]*$")


def fit_to_sentence(original: str, rewrite: str) -> str:
    """A sentence's rewrite made to sit where the sentence stood: on one line when the original was,
    with the original's capital first letter and final punctuation when the model dropped them, and
    the colon of a lead-in ("Here is a routine:") that the model ended with a full stop."""
    if "\n" not in original:
        rewrite = " ".join(rewrite.split())
    if original[:1].isupper() and rewrite[:1].islower():
        rewrite = rewrite[0].upper() + rewrite[1:]
    if original.endswith(":") and (rewrite[-1:].isalnum() or rewrite.endswith(".")):
        return rewrite.removesuffix(".") + ":"
    terminal = _TERMINAL.search(original)
    if terminal and not _TERMINAL.search(rewrite):
        rewrite += original[terminal.start()]
    return rewrite


def _spliced_candidates(text: str, units: list[Unit]) -> list[str]:
    """Whole-text candidates from per-unit ones: the i-th candidate of every rewritten unit."""
    from mbias.segment import splice

    rewritten = [u for u in units if u.candidates]
    count = max((len(u.candidates) for u in rewritten), default=0)
    return [
        splice(
            text,
            {
                (u.start, u.end): fit_to_sentence(u.text, u.candidates[min(i, len(u.candidates) - 1)])
                for u in rewritten
                if u.candidates[min(i, len(u.candidates) - 1)].strip()
            },
        )
        for i in range(count)
    ]


def _same_words(text: str, candidate: str) -> bool:
    """Whether ``candidate`` has ``text``'s words in order, whatever its punctuation and case."""
    return re.findall(r"\w+", text.lower()) == re.findall(r"\w+", candidate.lower())


def _action(text: str, rewrite: str) -> str:
    """ "kept" when the model gave the text back (spacing aside): nothing was rewritten."""
    return "kept" if " ".join(rewrite.split()) == " ".join(text.split()) else "rewritten"


def debias(texts: Iterable[str], engine: str | None = None, **settings: Any) -> list[Record]:
    """One-call convenience: ``mbias.debias(["..."])``."""
    return Debiaser(engine, settings=DebiasSettings(**settings)).debias(texts)
