"""The long-answer set: the project's neutral markdown answers (benchmarks/data/answers: headings,
lists, code, tables, inline code, URLs, abbreviations) with their gold sentences, each used clean and
with one or two biased sentences from held-out rows of the bias set (``mbias.splits.is_heldout``)
spliced in at known offsets. benchmarks/long_answers.py measures the sentence path on it and
benchmarks/throughput.py times it.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field

from mbias.eval.dev import repo_path
from mbias.segment import opening_label


@dataclass
class Answer:
    id: str
    markdown: str
    sentences: list[tuple[int, int]]  # gold prose sentences
    biased: list[tuple[int, int]] = field(default_factory=list)  # the spliced-in ones, by offsets
    biased_rows: list[dict] = field(default_factory=list)
    code: list[str] = field(default_factory=list)  # fenced blocks and tables, verbatim
    markers: int = 0  # list markers in the answer


def _table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows[1:]])


def render(answer: dict, inserted: dict[tuple[int, int, int], dict] | None = None) -> Answer:
    """Markdown for one answer's blocks and the offsets of its gold sentences. ``inserted`` maps
    (block, item, position) to a bias-set row whose sentence goes in at that place."""
    inserted = inserted or {}
    parts: list[str] = []
    out = Answer(answer["id"], "", [])
    cursor = 0

    def emit(text: str) -> int:
        nonlocal cursor
        parts.append(text)
        start, cursor = cursor, cursor + len(text)
        return start

    def sentences(block: int, item: int, items: list[str]) -> None:
        items = list(items)
        for position in sorted(((p for b, i, p in inserted if (b, i) == (block, item))), reverse=True):
            items.insert(position, None)  # placeholder for the biased sentence
        for k, sentence in enumerate(items):
            if k:
                emit(" ")
            row = None
            if sentence is None:
                position = k - sum(1 for s in items[:k] if s is None)
                row = inserted[(block, item, position)]
                sentence = biased_sentence(row["biased_text"])
            start = emit(sentence)
            # an opening "**Label:**" is markup, outside the sentence (mbias.segment)
            out.sentences.append((start + opening_label(sentence), start + len(sentence)))
            if row is not None:
                out.biased.append((start, start + len(sentence)))
                out.biased_rows.append(row)

    for b, block in enumerate(answer["blocks"]):
        if b:
            emit("\n\n")
        kind = block["type"]
        if kind == "heading":
            emit("## ")
            start = emit(block["text"])
            out.sentences.append((start, start + len(block["text"])))
        elif kind == "paragraph":
            sentences(b, 0, block["sentences"])
        elif kind == "list":
            for i, item in enumerate(block["items"]):
                if i:
                    emit("\n")
                emit(f"{i + 1}. " if block.get("ordered") else "- ")
                out.markers += 1
                sentences(b, i, item)
        elif kind == "code":
            fenced = f"```{block.get('lang', '')}\n{block['code']}\n```"
            emit(fenced)
            out.code.append(fenced)
        elif kind == "table":
            out.code.append(_table(block["rows"]))
            emit(out.code[-1])
    emit("\n")
    out.markdown = "".join(parts)
    return out


def biased_sentence(text: str) -> str:
    """A bias-set row as a sentence of an answer: capitalised, ending in punctuation."""
    text = " ".join(text.split())
    text = text[0].upper() + text[1:]
    return text if re.search(r"[.!?]['\")]*$", text) else text + "."


def ends_sentence(text: str) -> bool:
    """Whether a sentence of an answer ends in . ! ? or : (quotes, brackets and markup after it
    allowed). A biased sentence goes in only after one that does: a list item written as a bare
    label ("Functions and modules") followed by a sentence is not text an LLM writes, and no
    segmenter can find the boundary between them."""
    return bool(re.search(r"[.!?:][\"')\]*_`]*$", text.strip()))


def load_answers() -> list[dict]:
    rows = []
    for path in sorted(repo_path("benchmarks", "data", "answers").glob("*.jsonl")):
        rows += [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return rows


def heldout_biased_rows() -> list[dict]:
    from mbias.splits import is_heldout

    rows = []
    for path in sorted(repo_path("data", "bias").glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            if (
                row["action"] == "rewrite"
                and is_heldout(row["biased_text"])
                and "\n" not in row["biased_text"]
            ):
                rows.append(row)
    return rows


def build(seed: int = 0) -> list[Answer]:
    """Each neutral answer clean, with one, and with two biased sentences at random prose places
    (at the start of a paragraph or list item, or after a sentence that ends in punctuation)."""
    rng = random.Random(seed)
    pool = heldout_biased_rows()
    rng.shuffle(pool)
    built = []
    for answer in load_answers():
        places = [
            (b, i, p)
            for b, block in enumerate(answer["blocks"])
            for i, item in enumerate(
                [block["sentences"]] if block["type"] == "paragraph" else block.get("items", [])
            )
            if block["type"] in ("paragraph", "list")
            for p in range(len(item) + 1)
            if p == 0 or ends_sentence(item[p - 1])
        ]
        built.append(render(answer))
        for count in (1, 2):
            chosen = rng.sample(places, count)
            if count == 2 and chosen[0][:2] == chosen[1][:2]:
                chosen = chosen[:1] + [p for p in places if p[:2] != chosen[0][:2]][:1]
            inserted = {place: pool.pop() for place in chosen}
            made = render(answer, inserted)
            made.id = f"{answer['id']}+{count}"
            built.append(made)
    return built
