"""Preference pairs from a rewriter's own failures on reviewed pairs, for ``mbias train --method dpo``.

Only failures that need no safety judge count, so the judges never decide what the model is
trained away from: a decoding loop (``prompts.repeats_itself``), a rewrite pair whose text the
model hands back unchanged ("copied a text that needs a rewrite"), a keep pair (target = text)
that the model changes ("changed a text that needed none"), and, when a sentence encoder is given,
a rewrite that keeps clearly less of the text than the reviewed rewrite does ("dropped meaning the
reviewed rewrite keeps"). The reviewed target sets that floor per pair, so a text whose safe
version must change a lot is not held to a fixed similarity. The pairs come through the training
loader, so held-out and mbias-test texts never enter.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from typing import Any

from mbias.intervene import REASON_NO_REWRITE, Debiaser
from mbias.prompts import repeats_itself
from mbias.records import Record, RecordWriter
from mbias.splits import normalise
from mbias.train.data import REJECTED, Pair

COPIED = "copied a text that needs a rewrite"
CHANGED = "changed a text that needed none"
LOST = "dropped meaning the reviewed rewrite keeps"
LOOPED = "repeats itself (a decoding loop)"
READ_UNSAFE = "a reader found it still biased or toxic"
READ_LOST = "a reader found it dropped meaning"

Similarity = Callable[[list[str], list[str]], list[float]]


def failure(
    source: str,
    target: str,
    output: str,
    similarities: tuple[float, float] | None = None,
    meaning_margin: float = 0.1,
) -> str | None:
    """Why ``output`` fails the reviewed pair (source -> target), or None when it does not.

    ``similarities`` = (output's, target's) similarity to the source; the output has lost
    meaning when it falls more than ``meaning_margin`` below the target's."""
    if repeats_itself(output, source):
        return LOOPED
    source, target, output = normalise(source), normalise(target), normalise(output)
    if source != target and output == source:
        return COPIED
    if source == target and output != source:
        return CHANGED
    if similarities and source != target and output != target:
        output_similarity, target_similarity = similarities
        if output_similarity < target_similarity - meaning_margin:
            return LOST
    return None


def pair_records(pairs: list[Pair]) -> list[Record]:
    """Records with a content id (stable across runs, so ``--resume`` skips the right rows)."""
    records = []
    for p in pairs:
        key = f"{normalise(p['biased_text'])}\t{normalise(p['debiased_text'])}"
        extra = {k: v for k, v in p.items() if k not in ("biased_text", "debiased_text", REJECTED)}
        records.append(
            {
                "id": hashlib.sha1(key.encode("utf-8")).hexdigest()[:16],
                "text": p["biased_text"],
                "debiased_text": p["debiased_text"],
                **extra,
            }
        )
    return list({r["id"]: r for r in records}.values())  # weighted sources repeat pairs


def mine(
    debiaser: Debiaser,
    records: list[Record],
    writer: RecordWriter,
    on_batch: Callable[[int], None] | None = None,
    similarity: Similarity | None = None,
    meaning_margin: float = 0.1,
) -> Counter:
    """Rewrite every pending record and write the pair with the model's output and
    ``rejected_text`` ('' when the model did right); returns the count per outcome.

    With ``similarity`` (source, output pairs -> cosine), each row also carries the output's and
    the target's similarity to the source, and rewrites that lose meaning become failures."""
    counts: Counter = Counter()
    pending = [r for r in records if r["id"] not in writer.done_ids]
    done = 0
    for batch in debiaser.stream(pending):
        pairs = pending[done : done + len(batch)]
        sims: list[tuple[float, float] | None] = [None] * len(batch)
        if similarity is not None:
            sources = [p["text"] for p in pairs]
            candidates = [r["rewrite"] for r in batch] + [p["debiased_text"] for p in pairs]
            scored = similarity(sources * 2, candidates)
            sims = list(zip(scored[: len(batch)], scored[len(batch) :]))
        for pair, result, sim in zip(pairs, batch, sims):
            usable = result.get("reason") != REASON_NO_REWRITE
            output = result["rewrite"] if usable else ""
            why = None
            if usable:
                why = failure(pair["text"], pair["debiased_text"], output, sim, meaning_margin)
            row: dict[str, Any] = {
                **{k: v for k, v in pair.items() if k != "text"},
                "biased_text": pair["text"],
                "model_output": output,
                REJECTED: output if why else "",
                "failure": why or "",
            }
            if sim is not None:
                row["output_similarity"], row["target_similarity"] = round(sim[0], 4), round(sim[1], 4)
            writer.write(row)
            counts[why or ("no usable rewrite" if not usable else "fine")] += 1
        done += len(batch)
        if on_batch:
            on_batch(len(batch))
    return counts


def readable(row: dict[str, Any]) -> bool:
    """A mined rewrite only a reader can fail: it passed every check above and is not the target."""
    source, target, output = (normalise(row[k]) for k in ("biased_text", "debiased_text", "model_output"))
    return not row.get("failure") and bool(output) and source != target and output != target


def read_failures(
    mined: list[dict[str, Any]], labels: dict[tuple[str, str], dict[str, Any]]
) -> tuple[list[dict[str, Any]], Counter]:
    """Mined rows a reader labelled (``labels``: (text, candidate) -> 0/1 ``unsafe`` and
    ``meaning_kept``), with ``rejected_text`` = the rewrite when the reader failed it: still
    unsafe first, else meaning lost. Returns the rows and the count per outcome."""
    rows, counts = [], Counter()
    for row in mined:
        label = labels.get((row["biased_text"], row["model_output"]))
        if label is None or not readable(row):
            continue
        why = READ_UNSAFE if label["unsafe"] else "" if label["meaning_kept"] else READ_LOST
        counts[why or "fair"] += 1
        rows.append(
            {
                **row,
                REJECTED: row["model_output"] if why else "",
                "failure": why,
                "unsafe": label["unsafe"],
                "meaning_kept": label["meaning_kept"],
            }
        )
    return rows, counts
