"""Training pairs from one or several sources, filtered, mixed and split, with a data card.

Sources are files (CSV, TSV, JSONL, Parquet), directories (all their ``*.jsonl``) or ``hf:<dataset>``.
A source is written ``PATH[:N]`` to keep at most N pairs of it, or ``PATH[:xW]`` to repeat its
training pairs W times (mixing a small set into a large one). Texts that the paper's test set or the
project's held-out split (:func:`mbias.splits.is_heldout`) own never reach training, so every
evaluation downstream stays honest.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mbias.errors import MbiasError
from mbias.records import NoTextColumn, read_records
from mbias.splits import is_heldout, normalise, paper_test_set

PAPER_COLUMNS = ("biased_text", "debiased_text")
PARADETOX_REFERENCES = ("neutral1", "neutral2", "neutral3")
CARD_FIELDS = ("group", "dimension", "action")  # counted in the data card when a source has them
# A pair from a longer answer may carry the sentences around it; the prompt then shows them
# (mbias.prompts.render's ``context``), as the Debiaser does for a sentence of an answer.
CONTEXT_FIELDS = ("context_before", "context_after")
REJECTED = "rejected_text"  # preference data: what the model wrote instead of debiased_text
NEEDS = (
    "training pairs need columns biased_text and debiased_text, ParaDetox's toxic and neutral1-3, "
    "or --map src=COL,tgt=COL"
)
_SPEC = re.compile(r"(?P<ref>.+?):(?:(?P<cap>\d+)|x(?P<weight>\d+(?:\.\d+)?))")

Pair = dict[str, Any]


@dataclass
class DataSpec:
    """One ``--data`` argument."""

    ref: str
    cap: int | None = None
    weight: float = 1.0

    @classmethod
    def parse(cls, text: str) -> DataSpec:
        match = _SPEC.fullmatch(text.strip())
        if not match:
            return cls(text.strip())
        if match["cap"]:
            if int(match["cap"]) < 1:
                raise MbiasError(f"--data {text}: the cap must be at least 1")
            return cls(match["ref"], cap=int(match["cap"]))
        weight = float(match["weight"])
        if weight <= 0:
            raise MbiasError(f"--data {text}: the weight must be positive")
        return cls(match["ref"], weight=weight)


def parse_mapping(text: str | None) -> dict[str, str] | None:
    """``src=COL,tgt=COL`` -> {"src": COL, "tgt": COL}."""
    if not text:
        return None
    mapping = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or key.strip() not in ("src", "tgt") or not value.strip():
            raise MbiasError(f"--map {text!r}: expected src=COLUMN,tgt=COLUMN")
        mapping[key.strip()] = value.strip()
    if set(mapping) != {"src", "tgt"}:
        raise MbiasError(f"--map {text!r}: give both src=COLUMN and tgt=COLUMN")
    return mapping


@dataclass
class TrainingData:
    train: list[Pair]
    val: list[Pair]
    card: dict[str, Any] = field(default_factory=dict)


# -- reading -------------------------------------------------------------------------------------


def files_named(specs: list[str]) -> list[str]:
    """The files ``--data`` arguments read (a cap or weight stripped, a folder's *.jsonl listed)."""
    return [f for spec in specs for f in _files(DataSpec.parse(spec).ref)]


def _files(ref: str) -> list[str]:
    path = Path(ref)
    if ref.startswith("hf:") or not path.is_dir():
        return [ref]
    files = sorted(str(p) for p in path.glob("*.jsonl"))
    if not files:
        raise MbiasError(f"{ref}: directory has no *.jsonl files")
    return files


def _read(ref: str, mapping: dict[str, str] | None) -> list[dict[str, Any]]:
    try:
        return read_records(ref)
    except NoTextColumn as exc:
        if mapping:
            return read_records(ref, mapping["src"])  # names the missing column when it is absent
        raise MbiasError(f"{ref}: {NEEDS}; its columns are: {', '.join(exc.columns)}") from None


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def pair_context(pair: Pair) -> tuple[str, str] | None:
    """The (before, after) sentences a pair carries, or None for a lone sentence."""
    before, after = (pair.get(c, "") for c in CONTEXT_FIELDS)
    return (before, after) if before or after else None


def _pairs_of(
    ref: str, rows: list[dict[str, Any]], mapping: dict[str, str] | None, references: str
) -> list[Pair]:
    """Rows -> pairs, from the paper's columns, a --map, or ParaDetox's 1-3 references per row."""
    columns = set().union(*rows)  # JSONL rows need not all carry the same keys
    extras = [c for c in CARD_FIELDS if c in columns]

    def pair(src: Any, tgt: Any, row: dict[str, Any], **more: Any) -> Pair:
        out = {"biased_text": _text(src), "debiased_text": _text(tgt), "data_source": ref, **more}
        out.update({c: row[c] for c in extras if row.get(c) is not None})
        out.update({c: _text(row[c]) for c in CONTEXT_FIELDS if _text(row.get(c))})
        if REJECTED in columns:
            out[REJECTED] = _text(row.get(REJECTED))
        return out

    if mapping and {mapping["src"], mapping["tgt"]} <= columns:
        return [pair(r.get(mapping["src"]), r.get(mapping["tgt"]), r) for r in rows]
    if set(PAPER_COLUMNS) <= columns:
        return [pair(r.get("biased_text"), r.get("debiased_text"), r) for r in rows]
    if "toxic" in columns and "neutral1" in columns:
        pairs = []
        for row in rows:
            refs = [_text(row.get(c)) for c in PARADETOX_REFERENCES if _text(row.get(c))] or [""]
            for reference in refs if references == "all" else refs[:1]:
                pairs.append(pair(row["toxic"], reference, row, paradetox=True))
        return pairs
    raise MbiasError(f"{ref}: {NEEDS}; its columns are: {', '.join(sorted(columns))}")


# -- filtering, mixing, splitting ------------------------------------------------------------------


def _filter(
    pairs: list[Pair], seen: set[tuple[str, ...]], config: Any, test: frozenset[str]
) -> tuple[list, Counter]:
    """Drop bad pairs, counting why; ``seen`` carries dedup across sources. A preference pair is
    its rejected text too: the current model's failure on a text an older model also failed on
    is a pair of its own, not a copy of the older one."""
    kept, dropped = [], Counter()
    for p in pairs:
        src, tgt = p["biased_text"], p["debiased_text"]
        key = (normalise(src), normalise(tgt))
        if config.method == "dpo":
            key += (normalise(p.get(REJECTED) or ""),)
        if not src or not tgt:
            dropped["empty source or target"] += 1
        elif config.method == "dpo" and not p.get(REJECTED):
            dropped["no rejected_text (the model got it right)"] += 1
        elif key in seen:
            dropped["duplicate"] += 1
        elif len(src) < config.min_chars or len(src) + len(tgt) > config.max_chars:
            seen.add(key)
            dropped[f"length (source < {config.min_chars} or source+target > {config.max_chars} chars)"] += 1
        elif p.get("paradetox") and key[0] == key[1]:
            seen.add(key)
            dropped["ParaDetox reference equals the toxic source"] += 1
        elif key[0] in test:
            seen.add(key)
            dropped["source in the mbias-test set"] += 1
        elif is_heldout(src):
            seen.add(key)
            dropped["source held out (splits.is_heldout)"] += 1
        else:
            seen.add(key)
            kept.append(p)
    return kept, dropped


def _split(pairs: list[Pair], config: Any) -> tuple[list[Pair], set[str]]:
    """Seeded validation split by source text, so references of one source stay on one side."""
    sources = sorted({normalise(p["biased_text"]) for p in pairs})
    random.Random(config.seed).shuffle(sources)
    n_val = min(config.val_max, round(config.val_fraction * len(sources)))
    if config.val_fraction > 0 and len(sources) >= 2:
        n_val = max(1, n_val)
    val_sources = set(sources[:n_val])
    return [p for p in pairs if normalise(p["biased_text"]) in val_sources], val_sources


def _weighted(pairs: list[Pair], weight: float, rng: random.Random) -> list[Pair]:
    whole, fraction = int(weight), weight - int(weight)
    return pairs * whole + rng.sample(pairs, round(fraction * len(pairs)))


def load_training_data(specs: list[str], config: Any, mapping: dict[str, str] | None = None) -> TrainingData:
    """Read, filter, cap, split and mix every ``--data`` source; raises MbiasError on bad data."""
    if not specs:
        raise MbiasError("give at least one --data source")
    test_path = config.test_set_path()
    test = paper_test_set(Path(test_path)) if test_path and Path(test_path).exists() else frozenset()
    rng = random.Random(config.seed)
    seen: set[tuple[str, ...]] = set()
    per_source: list[tuple[DataSpec, list[Pair], dict[str, Any]]] = []
    for text in specs:
        spec = DataSpec.parse(text)
        rows_read, raw = 0, []
        for ref in _files(spec.ref):
            rows = _read(ref, mapping)
            rows_read += len(rows)
            raw.extend(_pairs_of(ref, rows, mapping, config.references))
            if config.method == "dpo" and rows and REJECTED not in rows[0]:
                raise MbiasError(f"{ref}: --method dpo needs a {REJECTED} column (mbias mine writes one)")
        kept, dropped = _filter(raw, seen, config, test)
        new = len(raw) - dropped["duplicate"]
        if dropped["duplicate"] and new <= 1 and len(raw) > 1:
            raise MbiasError(
                f"{spec.ref}: duplicate-only: its {len(raw)} pairs hold {new} new distinct pair(s)"
            )
        if spec.cap is not None and len(kept) > spec.cap:
            kept = rng.sample(kept, spec.cap)
        info = {
            "spec": text,
            "rows": rows_read,
            "pairs": len(raw),
            "dropped": dict(dropped),
            "kept": len(kept),
        }
        per_source.append((spec, kept, info))
    everything = [p for _, kept, _ in per_source for p in kept]
    if not everything:
        reasons = Counter()
        for _, _, info in per_source:
            reasons.update(info["dropped"])
        detail = ", ".join(f"{n} {why}" for why, n in reasons.most_common()) or "no pairs read"
        raise MbiasError(f"no training pairs left after filtering ({detail})")
    val, val_sources = _split(everything, config)
    train: list[Pair] = []
    for spec, kept, info in per_source:
        mine = [p for p in kept if normalise(p["biased_text"]) not in val_sources]
        weighted = _weighted(mine, spec.weight, rng) if spec.weight != 1.0 else mine
        info.update(cap=spec.cap, weight=spec.weight, train=len(weighted), val=len(kept) - len(mine))
        train.extend(weighted)
    if not train:
        raise MbiasError(
            "no training pairs left after the validation split; add data or --set val_fraction=0"
        )
    rng.shuffle(train)
    card = _card(per_source, train, val, config, test_path if test else "")
    return TrainingData(train=train, val=val, card=card)


# -- data card -------------------------------------------------------------------------------------


def _card(
    per_source: list, train: list[Pair], val: list[Pair], config: Any, test_path: str
) -> dict[str, Any]:
    counts = {}
    for name in CARD_FIELDS:
        values = Counter(str(p[name]) for p in train + val if p.get(name) not in (None, ""))
        if values:
            counts[name] = dict(values.most_common())
    filters = [
        "empty source or target",
        "exact duplicates (case/whitespace-normalised source, target and DPO rejected text, across sources)",
        f"length: source >= {config.min_chars} chars and source + target <= {config.max_chars} chars",
        "ParaDetox references identical to their toxic source",
        f"sources in the paper's test set ({test_path})"
        if test_path
        else "mbias-test check skipped (file not found)",
        "sources held out by mbias.splits.is_heldout (kept for judges and the quality benchmark)",
        f"validation split: {config.val_fraction:.0%} of distinct sources (at most {config.val_max}), "
        f"seed {config.seed}",
    ]
    if config.references == "first":
        filters.append("ParaDetox: first reference per toxic sentence only")
    return {
        "sources": [info for _, _, info in per_source],
        "filters": filters,
        "train_pairs": len(train),
        "val_pairs": len(val),
        "counts": counts,
        "prompt_style": config.prompt_style,
    }


def card_markdown(card: dict[str, Any]) -> str:
    lines = [
        "# Data card",
        "",
        f"Training pairs: {card['train_pairs']:,}; validation pairs: {card['val_pairs']:,} "
        f"(prompt style `{card['prompt_style']}`).",
        "",
        "| source | rows | pairs | dropped | kept | cap | weight | train | val |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in card["sources"]:
        dropped = "; ".join(f"{why}: {n}" for why, n in s["dropped"].items()) or "-"
        lines.append(
            f"| `{s['spec']}` | {s['rows']} | {s['pairs']} | {dropped} | {s['kept']} | {s['cap'] or '-'} "
            f"| {s['weight']:g} | {s['train']} | {s['val']} |"
        )
    lines += ["", "Filters applied:", ""] + [f"- {f}" for f in card["filters"]]
    for name, values in card["counts"].items():
        lines += ["", f"Pairs per {name}:", ""] + [f"- {k}: {v}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def write_card(card: dict[str, Any], directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "data_card.json").write_text(
        json.dumps(card, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    (directory / "data_card.md").write_text(card_markdown(card), encoding="utf-8")
