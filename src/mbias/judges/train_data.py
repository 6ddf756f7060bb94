"""Labelled texts for the judge heads, read from the shared datasets and the project's bias pairs.

Each example keeps its source so training can balance sources and validation can report per
source. Texts of the paper's test set (mbias-test) are removed from every pool
(``splits.paper_test_set``): it chooses nothing, and benchmarks report agreement with its GPT labels.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mbias.errors import MbiasError
from mbias.splits import bucket, is_dev, is_heldout, normalise, paper_test_set

HEADS = ("toxicity", "bias")


@dataclass(frozen=True)
class Example:
    text: str
    label: int  # 1 = toxic / biased
    source: str

    @property
    def heldout(self) -> bool:
        return is_heldout(self.text)

    @property
    def dev(self) -> bool:
        return is_dev(self.text)

    @property
    def trains(self) -> bool:
        """On the training side: neither held out (test) nor dev (model and threshold choice)."""
        return not (self.heldout or self.dev)


def _rows(path: Path, delimiter: str, encoding: str = "utf-8") -> Iterator[dict[str, str]]:
    if not path.exists():
        raise MbiasError(f"{path}: missing; pass --data pointing at the shared data folder")
    with path.open(encoding=encoding, newline="") as handle:
        yield from csv.DictReader(handle, delimiter=delimiter)


def paradetox(data: Path) -> Iterator[Example]:
    """Toxic sentences and crowd-confirmed toxic 'cannot rewrite' comments (1) vs neutral references (0)."""
    for row in _rows(data / "paradetox" / "paradetox_train.tsv", "\t"):
        yield Example(row["toxic"], 1, "paradetox")
        for column in ("neutral1", "neutral2", "neutral3"):
            if row.get(column, "").strip():
                yield Example(row[column], 0, "paradetox")
    for row in _rows(data / "paradetox" / "paradetox_cannot_rewrite.tsv", "\t"):
        reasons = json.loads(row["OUTPUT:reasons"] or "{}")
        # only comments a worker called toxic; "not_toxic" and "unclear" ones carry no reliable label
        if reasons.get("toxic_content") and not reasons.get("not_toxic"):
            yield Example(row["INPUT:toxic_comment"].strip().strip('"'), 1, "paradetox")


def toxigen(data: Path) -> Iterator[Example]:
    """Human-written implicit hate (1) vs neutral (0) statements about 16 groups."""
    for row in _rows(data / "toxigen-prompts" / "toxigen_statements.csv", ","):
        yield Example(row["text"], int(row["label"] == "hate"), "toxigen")


def babe(data: Path) -> Iterator[Example]:
    """BABE (expert group 2) news sentences: Biased (1) vs Non-biased (0)."""
    labels = {"Biased": 1, "Non-biased": 0}
    for row in _rows(data / "babe" / "final_labels_SG2.csv", ";", encoding="utf-8-sig"):
        if row["label_bias"] in labels:
            yield Example(row["text"], labels[row["label_bias"]], "babe")


def bias_pairs(directory: Path) -> Iterator[Example]:
    """The project's own pairs: rewritten biased texts (1), their rewrites and kept texts (0).

    The files are written while other work goes on, so a half-written last line is skipped.
    """
    for path in sorted(directory.glob("*.jsonl")) if directory.is_dir() else []:
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(row, dict) or not str(row.get("biased_text") or "").strip():
                continue
            if row.get("action") == "rewrite" and str(row.get("debiased_text") or "").strip():
                yield Example(row["biased_text"], 1, "bias-pairs")
                yield Example(row["debiased_text"], 0, "bias-pairs")
            elif row.get("action") == "keep":
                yield Example(row["biased_text"], 0, "bias-pairs")


def _jsonl(path: Path) -> Iterator[dict]:
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                yield json.loads(line)


# Files of biased statements (1) beside a fair counterpart on the same point (0), one source: the
# polite, assistant-voiced bias that social-media training data lacks (advice.jsonl: discriminatory
# advice and decisions about groups), stereotypes beside a sentence rejecting them
# (counter-speech.jsonl), without which the judge flagged 60 % of held-out counter-speech (v9), and
# blunt, casual stereotypes beside a plain sentence on their topic (stereotypes.jsonl), the kind
# the screen let through unread ("all women care about is shopping ...").
PAIRED_FILES = ("advice.jsonl", "counter-speech.jsonl", "stereotypes.jsonl")


def advice(directory: Path, files: tuple[str, ...] = PAIRED_FILES) -> Iterator[Example]:
    """The paired files' biased statements (1) and fair counterparts (0), as source "advice"."""
    for name in files:
        for row in _jsonl(directory / name):
            yield Example(row["biased_text"], 1, "advice")
            yield Example(row["fair_text"], 0, "advice")


def negatives(directory: Path) -> Iterator[Example]:
    """Fair sentences the judge must leave alone (0): identity mentions, counter-speech, facts about
    discrimination, fair advice, and plain LLM-answer prose."""
    for row in _jsonl(directory / "negatives.jsonl"):
        yield Example(row["text"], 0, "negatives")


def answer_prose(directory: Path) -> Iterator[Example]:
    """Sentences of assistant answers the screen must pass (0), a source of their own: facts and
    how-tos naming a place, faith, language or group, alarming words in harmless use ("fatal",
    "exploit", "kill the process"), and advice about dealing with people by role. On such prose the
    judge of session 24 flagged 7 % of sentences outright (docs/lab/results-log.md)."""
    path = directory / "prose.jsonl"
    if path.exists():
        for row in _jsonl(path):
            yield Example(row["text"], 0, "answer-prose")


# Neutral sentences that name a group and say nothing about it. benchmarks/judges.py measures false
# alarms on HolisticBias's own templates, none of which is here, so its figure stays a test.
IDENTITY_TEMPLATES = (
    "Hi, I'm {a}.",
    "Just so you know, I'm {a}.",
    "How are you? I'm {a}.",
    "I'm currently {a}.",
    "My neighbour is {a}.",
    "The new manager is {a}.",
    "She wrote a book about growing up as {a}.",
    "He is {a} and works as an accountant.",
    "Our team includes {many}.",
    "The survey asked {many} about their commute.",
    "The clinic serves {many} from across the city.",
    "The museum hired {many} as guides this summer.",
)
IDENTITY_TEMPLATES_PER_DESCRIPTOR = 4


def holistic_descriptors(data: Path) -> dict[str, list[str]]:
    """HolisticBias descriptors per axis (v1.1), without the ones its authors mark dispreferred."""
    path = data / "holistic-bias" / "v1.1" / "descriptors.json"
    if not path.exists():
        raise MbiasError(f"{path}: missing; pass --data pointing at the shared data folder")
    out: dict[str, list[str]] = {}
    for axis, buckets in json.loads(path.read_text(encoding="utf-8")).items():
        if axis == "nonce":  # made-up words, not groups
            continue
        groups = buckets.values() if isinstance(buckets, dict) else [buckets]
        terms = [
            d if isinstance(d, str) else d["descriptor"]
            for group in groups
            for d in group
            if isinstance(d, str) or d.get("preference") != "dispreferred"
        ]
        out[axis] = list(dict.fromkeys(terms))
    return out


def identity_phrases(term: str) -> dict[str, str]:
    """Template slots for one descriptor: 'a deaf person', 'deaf people'."""
    article = "an" if term[0].lower() in "aeiou" else "a"
    return {"a": f"{article} {term} person", "many": f"{term} people"}


def identity_mentions(data: Path) -> Iterator[Example]:
    """HolisticBias descriptors in neutral templates (0), a few templates per descriptor chosen by
    hash. Descriptors on the held-out side never appear, so the benchmark can report them apart."""
    for terms in holistic_descriptors(data).values():
        for term in terms:
            if is_heldout(term):
                continue
            first = bucket(term) % len(IDENTITY_TEMPLATES)
            for offset in range(IDENTITY_TEMPLATES_PER_DESCRIPTOR):
                template = IDENTITY_TEMPLATES[(first + 3 * offset) % len(IDENTITY_TEMPLATES)]
                yield Example(template.format(**identity_phrases(term)), 0, "identity")


def clean(examples: list[Example], excluded: set[str]) -> tuple[list[Example], dict[str, int]]:
    """Drop empty texts, test-set texts, duplicates, and texts that carry both labels."""
    labels_of: dict[str, set[int]] = {}
    for example in examples:
        labels_of.setdefault(normalise(example.text), set()).add(example.label)
    kept, seen = [], set()
    dropped = {"empty": 0, "test_set": 0, "duplicate": 0, "conflicting_label": 0}
    for example in examples:
        key = normalise(example.text)
        if not key:
            dropped["empty"] += 1
        elif key in excluded:
            dropped["test_set"] += 1
        elif len(labels_of[key]) > 1:
            dropped["conflicting_label"] += 1
        elif key in seen:
            dropped["duplicate"] += 1
        else:
            seen.add(key)
            kept.append(example)
    return kept, dropped


def head_pools(
    data: Path, pairs_dir: Path, judge_dir: Path | None = None
) -> tuple[dict[str, list[Example]], dict[str, dict[str, int]]]:
    """Examples per head, cleaned, and how many were dropped why. ``judge_dir`` (data/judge) adds
    discriminatory advice to the bias head and fair sentences and answer prose to both heads;
    identity mentions (HolisticBias) go to both heads as negatives. Readers' labels of rewrites
    train heads of their own (mbias.judges.readers): in the bias head's pool they cost held-out
    screening (judge v5)."""
    shared_toxigen = list(toxigen(data))
    fair = (list(negatives(judge_dir)) + list(answer_prose(judge_dir)) if judge_dir else []) + list(
        identity_mentions(data)
    )
    raw = {
        "toxicity": list(paradetox(data)) + shared_toxigen + fair,
        "bias": shared_toxigen + list(babe(data)) + list(bias_pairs(pairs_dir)) + fair,
    }
    if judge_dir:
        raw["bias"] += list(advice(judge_dir))
    folder = data / "mbias-test"
    excluded = paper_test_set(folder) if folder.is_dir() else frozenset()
    pools, dropped = {}, {}
    for head, examples in raw.items():
        pools[head], dropped[head] = clean(examples, excluded)
    return pools, dropped
