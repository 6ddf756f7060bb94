"""The shipped bias set: schema, targets, duplicates, and no leak from the paper's test set."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from mbias import config
from mbias.records import read_records
from mbias.splits import is_heldout, normalise

ROOT = Path(__file__).resolve().parents[1]
BIAS_DIR = ROOT / "data" / "bias"
MBIAS_TEST = config.data_dir() / "mbias-test" / "train-500-biased-evaluation.csv"  # shipped in the package
FIELDS = {"id", "biased_text", "debiased_text", "group", "dimension", "source", "action", "guideline"}
DIMENSIONS = {
    "gender", "sexual_orientation", "race_ethnicity", "religion", "disability", "age",
    "socio_economic", "political", "nationality", "appearance", "toxicity",
}  # fmt: skip
SOURCES = {"toxigen:hate", "toxigen:neutral", "babe:biased", "babe:non-biased", "authored"}


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return [r for path in sorted(BIAS_DIR.glob("*.jsonl")) for r in read_records(path, "biased_text")]


def test_schema_and_vocabularies(rows):
    for row in rows:
        assert row.keys() >= FIELDS, row["id"]
        assert row["dimension"] in DIMENSIONS and row["source"] in SOURCES, row["id"]
        assert row["action"] in {"rewrite", "keep"} and row["guideline"] == "1.0"


def test_targets_present_and_keep_rows_identical(rows):
    for row in rows:
        assert row["debiased_text"].strip() and row["biased_text"].strip(), row["id"]
        if row["action"] == "keep":
            assert row["debiased_text"] == row["biased_text"], row["id"]
        else:
            assert normalise(row["debiased_text"]) != normalise(row["biased_text"]), row["id"]


def test_no_duplicates_and_unique_ids(rows):
    sources = Counter(normalise(r["biased_text"]) for r in rows)
    assert [t for t, n in sources.items() if n > 1] == []
    assert len({r["id"] for r in rows}) == len(rows)


def test_size_and_coverage_meet_the_issue(rows):
    actions = Counter(r["action"] for r in rows)
    assert actions["rewrite"] >= 2000 and actions["keep"] >= 600
    required = {
        "women", "lgbtq", "black", "asian", "chinese", "latino", "mexican", "middle_eastern", "muslim",
        "jewish", "native_american", "physical_disability", "mental_disability",
    }  # fmt: skip
    assert required <= {r["group"] for r in rows}


def test_no_row_from_the_test_set_and_no_heldout_source_row(rows):
    test_texts = {normalise(r["text"]) for r in read_records(MBIAS_TEST, "biased_text")}
    assert not [r["id"] for r in rows if normalise(r["biased_text"]) in test_texts]
    borrowed = [r for r in rows if r["source"] != "authored"]
    assert not [r["id"] for r in borrowed if is_heldout(r["biased_text"])]
