"""Fill the annotation store: candidate rewrites from an engine, or existing pairs, with judge scores.

Generation goes through :class:`mbias.intervene.Debiaser` (the one rewrite path of the project),
with screening off so every text gets candidates. Each batch is committed as soon as it is done,
so an interrupted run keeps what it stored, and a re-run skips texts already in the database.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mbias.annotate.store import NewCandidate, NewItem, Store, text_key
from mbias.errors import MbiasError
from mbias.intervene import Debiaser
from mbias.judges import Judge
from mbias.records import Record

GROUP_COLUMNS = ("group", "target_group")
DIMENSION_COLUMNS = ("dimension", "bias_type", "category")
IMPORT_BATCH = 64


@dataclass
class Summary:
    added: int = 0
    candidates: int = 0
    already: int = 0
    empty: int = 0

    def line(self, db: str) -> str:
        return (
            f"{db}: added {self.added} items ({self.candidates} candidates); "
            f"{self.already} already there, {self.empty} empty texts skipped"
        )


def select_new(store: Store, records: list[Record], summary: Summary) -> list[Record]:
    """Records whose text is neither empty nor already stored (nor repeated earlier in the input)."""
    keyed = []
    for record in records:
        if record["text"].strip():
            keyed.append((text_key(record["text"]), record))
        else:
            summary.empty += 1
    known = store.known_keys(key for key, _ in keyed)
    fresh = []
    for key, record in keyed:
        if key in known:
            summary.already += 1
        else:
            known.add(key)
            fresh.append(record)
    return fresh


def _first(record: Record, columns: tuple[str, ...]) -> str | None:
    for name in columns:
        value = record.get(name)
        if value not in (None, ""):
            return str(value)
    return None


def new_item(record: Record, origin: str, source_file: str, skip: tuple[str, ...] = ()) -> NewItem:
    """An item with its provenance; columns other than the text are kept as metadata."""
    hidden = {"id", "text", *skip, *GROUP_COLUMNS, *DIMENSION_COLUMNS}
    meta = {k: v for k, v in record.items() if k not in hidden and v != record["text"]}
    return NewItem(
        text=record["text"],
        origin=origin,
        source_file=source_file,
        source_id=str(record["id"]),
        group=_first(record, GROUP_COLUMNS),
        dimension=_first(record, DIMENSION_COLUMNS),
        meta=meta,
    )


def score_items(judge: Judge, items: list[NewItem]) -> None:
    """Toxicity and bias of each candidate (and of sources not yet scored), the judge's verdict at
    its calibrated thresholds (``unsafe`` 0/1), and how much of the source's meaning each candidate
    keeps: one judge call each for the whole batch."""
    unscored = [item for item in items if not item.scores]
    pairs = [(item, candidate) for item in items for candidate in item.candidates]
    texts = [item.text for item in unscored] + [candidate.text for _, candidate in pairs]
    if not texts:
        return
    scores = [{**score, "unsafe": float(judge.is_unsafe(score))} for score in judge.score(texts)]
    for item, score in zip(unscored, scores):
        item.scores = score
    if pairs:
        similarity = judge.similarity([item.text for item, _ in pairs], [c.text for _, c in pairs])
        for (_, candidate), score, sim in zip(pairs, scores[len(unscored) :], similarity):
            candidate.scores = {**score, "similarity": sim}


def _candidate_texts(result: Record) -> list[str]:
    """What the engine proposed: all sampled candidates, or the single rewrite unless the
    Debiaser fell back to the original (empty output, refusal, too long)."""
    raw = result.get("candidates")
    if raw is None:
        fell_back = result["action"] == "flagged" and result["rewrite"] == result["text"]
        raw = [] if fell_back else [result["rewrite"]]
    return [text for text in dict.fromkeys(raw) if text.strip()]


def annotate_records(
    store: Store,
    records: list[Record],
    debiaser: Debiaser,
    *,
    source_file: str,
    judge_name: str | None,
    on_batch: Callable[[int], None] | None = None,
) -> Summary:
    """Candidates for each new text from the Debiaser, scored when it has a judge, stored batch by batch."""
    summary = Summary()
    fresh = select_new(store, records, summary)
    origin = getattr(debiaser.engine, "name", "engine")
    done = 0
    for batch in debiaser.stream(fresh):
        items = []
        for source, result in zip(fresh[done : done + len(batch)], batch):
            item = new_item(source, origin, source_file)
            item.engine_action, item.engine_reason = result.get("action"), result.get("reason")
            added = {k: v for k, v in result.items() if k not in source}
            item.scores = {k.removeprefix("input_"): v for k, v in added.items() if k.startswith("input_")}
            if item.scores:  # the Debiaser's judge scored the source already
                item.scores["unsafe"] = float(debiaser.judge.is_unsafe(item.scores))
            item.candidates = [
                NewCandidate(text, origin, chosen=text == result["rewrite"])
                for text in _candidate_texts(result)
            ]
            items.append(item)
        done += len(batch)
        if debiaser.judge is not None:
            score_items(debiaser.judge, items)
        summary.added += len(store.add_items(items, actor=f"annotate:{origin}", judge=judge_name))
        summary.candidates += sum(len(i.candidates) for i in items)
        if on_batch:
            on_batch(len(batch))
    return summary


def import_pairs(
    store: Store,
    records: list[Record],
    *,
    source_file: str,
    target_column: str = "debiased_text",
    judge: Judge | None = None,
    judge_name: str | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> Summary:
    """Existing ``biased_text`` -> ``debiased_text`` pairs as items whose one candidate is the given
    target, so a hand-written dataset goes through the same review as the LLM's candidates."""
    if records and target_column not in records[0]:
        raise MbiasError(
            f"{source_file}: no column {target_column!r} to import as the rewrite (see --target-column)"
        )
    summary = Summary()
    fresh = select_new(store, records, summary)
    origin = f"import:{source_file}"
    for start in range(0, len(fresh), IMPORT_BATCH):
        items = []
        for record in fresh[start : start + IMPORT_BATCH]:
            item = new_item(record, origin, source_file, skip=(target_column,))
            target = str(record.get(target_column) or "")
            item.candidates = [NewCandidate(target, origin, chosen=True)] if target.strip() else []
            items.append(item)
        if judge is not None:
            score_items(judge, items)
        summary.added += len(store.add_items(items, actor=f"import:{source_file}", judge=judge_name))
        summary.candidates += sum(len(i.candidates) for i in items)
        if on_batch:
            on_batch(len(items))
    return summary
