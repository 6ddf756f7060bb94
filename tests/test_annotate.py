"""The annotation store, the annotator and the export: statuses, audit log, optimistic concurrency,
re-runs that add only new texts, crash safety, and the exported schema with its provenance."""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mbias.annotate.annotator import annotate_records, import_pairs
from mbias.annotate.diff import word_diff
from mbias.annotate.export import training_pairs
from mbias.annotate.stats import cohen_kappa, review_stats
from mbias.annotate.store import Conflict, NewCandidate, NewItem, Store
from mbias.cli import app
from mbias.errors import MbiasError
from mbias.intervene import Debiaser, DebiasSettings, fit_to_sentence
from mbias.judges import head_margin
from mbias.records import read_records

runner = CliRunner()


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


class ScriptedEngine:
    """Returns fixed candidates per prompt, so the store's handling of them can be checked exactly."""

    name = "scripted"
    tokenizer = None
    context_window = None

    def __init__(self, outputs: list[str], fail_after: int | None = None):
        self.outputs, self.fail_after, self.calls = outputs, fail_after, 0

    def generate(self, prompts, *, max_new_tokens=128, temperature=0.0, n=1):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("engine died")
        return [list(self.outputs[:n]) for _ in prompts]


class LengthJudge:
    """Deterministic judge: longer texts are 'more toxic'; similarity is the share of the output's
    words found in the source."""

    def score(self, texts):
        return [{"toxicity": min(1.0, len(t) / 100), "bias": 0.1} for t in texts]

    def similarity(self, sources, outputs):
        words = [
            (set(re.findall(r"\w+", a.lower())), set(re.findall(r"\w+", b.lower())))
            for a, b in zip(sources, outputs)
        ]
        return [len(a & b) / max(1, len(b)) for a, b in words]

    def is_unsafe(self, scores, margin=1.0):
        return scores["toxicity"] >= 0.5 * head_margin(margin, "toxicity")


def add_item(store: Store, text: str, candidates: tuple[str, ...] = ("a fair rewrite",), **fields) -> int:
    item = NewItem(
        text=text, origin="test", candidates=[NewCandidate(c, "test") for c in candidates], **fields
    )
    return store.add_items([item], actor="test")[0]


# -- the annotator --------------------------------------------------------------------------------
def test_annotate_cli_with_tiny_model_adds_only_new_texts(tiny_model_dir, tmp_path):
    rows = [
        {"id": "a", "text": "Women are bad drivers.", "group": "women", "dimension": "gender"},
        {"id": "b", "text": "Old people are slow with computers.", "group": "elderly", "dimension": "age"},
        {"id": "c", "text": "   "},
        {"id": "d", "text": "Women are  bad drivers."},  # same text, other spacing
    ]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    db = tmp_path / "ann.db"
    args = ["annotate", "--input", str(source), "--engine", f"hf:{tiny_model_dir}", "--db", str(db)]
    args += ["--candidates", "2", "--judge", "none", "--max-new-tokens", "6"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    store = Store(db)
    first = {store.item(i)["text"]: store.item(i) for i in (1, 2)}
    assert set(first) == {rows[0]["text"], rows[1]["text"]}
    assert store.item(3) is None  # the blank text and the re-spaced duplicate were not added
    women = first[rows[0]["text"]]
    assert (women["group_name"], women["dimension"], women["source_id"]) == ("women", "gender", "a")
    assert women["source_file"] == str(source) and women["status"] == "pending"
    assert sum(len(item["candidates"]) for item in first.values()) >= 1
    for item in first.values():
        assert len(item["candidates"]) <= 2
        assert all(c["origin"] == f"hf:{tiny_model_dir}" and c["text"].strip() for c in item["candidates"])
        assert store.audit("item", item["id"])[0]["new"] == "pending"

    write_jsonl(source, [*rows, {"id": "e", "text": "The manager ruined the schedule."}])
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "added 1 items" in " ".join(result.output.split())
    assert store.item(3)["text"] == "The manager ruined the schedule."
    assert store.item(4) is None
    assert {i: store.item(i)["created_at"] for i in (1, 2)} == {
        i: first[store.item(i)["text"]]["created_at"] for i in (1, 2)
    }


def test_at_temperature_zero_the_candidates_are_the_greedy_rewrite_then_samples(tiny_model_dir, tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", [{"text": "Old people are slow."}])
    result = runner.invoke(
        app,
        ["annotate", str(source), "--engine", f"hf:{tiny_model_dir}", "--db", str(tmp_path / "a.db")]
        + ["--candidates", "3", "--temperature", "0", "--judge", "none"],
    )
    assert result.exit_code == 0, result.output
    settings = DebiasSettings(screen=False, max_new_tokens=160)
    [greedy] = Debiaser(f"hf:{tiny_model_dir}", judge="none", settings=settings).debias(
        ["Old people are slow."]
    )
    texts = [c["text"] for c in Store(tmp_path / "a.db").item(1)["candidates"]]
    # the record's rewrite is the candidate fitted to its sentence (capital, final stop)
    assert greedy["rewrite"].strip() and fit_to_sentence(greedy["text"], texts[0]) == greedy["rewrite"]
    assert len(texts) > 1


def test_candidates_are_deduplicated_scored_and_the_pick_marked(tmp_path):
    engine = ScriptedEngine(
        ["Drivers make mistakes.", "", "Drivers make mistakes.", "Some drivers are careless."]
    )
    settings = DebiasSettings(candidates=4, temperature=0.7, screen=False)
    debiaser = Debiaser(engine, judge=LengthJudge(), settings=settings)
    store = Store(tmp_path / "a.db")
    records = [{"id": "1", "text": "Women are bad drivers, everyone knows it."}]
    summary = annotate_records(store, records, debiaser, source_file="in.jsonl", judge_name="length")
    assert (summary.added, summary.candidates) == (1, 2)
    item = store.item(1)
    assert [c["text"] for c in item["candidates"]] == ["Drivers make mistakes.", "Some drivers are careless."]
    assert set(item["scores"]) == {"toxicity", "bias", "unsafe"}
    assert item["scores"]["toxicity"] == pytest.approx(len(records[0]["text"]) / 100)
    for candidate in item["candidates"]:
        assert set(candidate["scores"]) == {"toxicity", "bias", "unsafe", "similarity"}
        assert candidate["scores"]["toxicity"] == pytest.approx(len(candidate["text"]) / 100)
        assert candidate["scores"]["unsafe"] == float(len(candidate["text"]) >= 50)
    judge = LengthJudge()
    best = max(item["candidates"], key=lambda c: judge.similarity([records[0]["text"]], [c["text"]])[0])
    assert [c["chosen"] for c in item["candidates"]] == [int(c is best) for c in item["candidates"]]
    assert item["engine_action"] == "rewritten"


def test_a_crash_mid_run_keeps_the_batches_already_stored(tmp_path):
    store = Store(tmp_path / "a.db")
    records = [{"id": str(i), "text": f"text number {i}"} for i in range(4)]
    settings = DebiasSettings(batch_size=2, screen=False)
    dying = Debiaser(ScriptedEngine(["a rewrite"], fail_after=1), settings=settings)
    with pytest.raises(RuntimeError):
        annotate_records(store, records, dying, source_file="in", judge_name=None)
    assert [store.item(i)["text"] for i in (1, 2)] == ["text number 0", "text number 1"]
    assert store.item(3) is None
    healthy = Debiaser(ScriptedEngine(["a rewrite"]), settings=settings)
    summary = annotate_records(store, records, healthy, source_file="in", judge_name=None)
    assert (summary.added, summary.already) == (2, 2)


def test_import_pairs_makes_the_target_the_one_candidate(tmp_path):
    rows = [
        {
            "id": "p1",
            "biased_text": "Boomers ruined everything.",
            "debiased_text": "Some policies had costs.",
            "group": "elderly",
            "dimension": "age",
            "source": "toxigen:hate",
        },
        {"id": "p2", "biased_text": "Already fair text.", "debiased_text": ""},
    ]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    store = Store(tmp_path / "a.db")
    records = read_records(path, "biased_text")
    summary = import_pairs(store, records, source_file=str(path), judge=LengthJudge(), judge_name="length")
    assert (summary.added, summary.candidates) == (2, 1)
    item = store.item(1)
    assert item["text"] == "Boomers ruined everything."
    assert [(c["text"], c["origin"], c["chosen"]) for c in item["candidates"]] == [
        ("Some policies had costs.", f"import:{path}", 1)
    ]
    assert (item["group_name"], item["dimension"], item["meta"]) == (
        "elderly",
        "age",
        {"source": "toxigen:hate"},
    )
    assert "similarity" in item["candidates"][0]["scores"]
    assert store.item(2)["candidates"] == []
    assert import_pairs(store, records, source_file=str(path)).added == 0
    with pytest.raises(MbiasError, match="target"):
        import_pairs(store, records, source_file=str(path), target_column="missing")


def test_import_pairs_cli_reads_several_files(tmp_path):
    first = write_jsonl(tmp_path / "a.jsonl", [{"biased_text": "x is bad", "debiased_text": "x varies"}])
    second = write_jsonl(tmp_path / "b.jsonl", [{"biased_text": "y is bad", "debiased_text": "y varies"}])
    db = tmp_path / "a.db"
    result = runner.invoke(
        app, ["annotate", "--import-pairs", "--db", str(db), "--judge", "none", str(first), str(second)]
    )
    assert result.exit_code == 0, result.output
    assert [Store(db).item(i)["source_file"] for i in (1, 2)] == [str(first), str(second)]


# -- decisions, audit, concurrency ---------------------------------------------------------------------
def test_decisions_set_status_and_every_change_is_audited(tmp_path):
    store = Store(tmp_path / "a.db")
    item_id = add_item(store, "Women can't drive.", ("People can drive.", "Drivers vary."))
    first, second = (c["id"] for c in store.item(item_id)["candidates"])

    assert store.decide(item_id, "alice", "accepted", 0, candidate_id=first) == {
        "decision": "accepted",
        "version": 1,
    }
    item = store.item(item_id)
    assert (item["status"], item["version"]) == ("accepted", 1)
    assert [(r["reviewer"], r["final_text"]) for r in item["reviews"]] == [("alice", "People can drive.")]

    store.decide(item_id, "alice", "edited", 1, candidate_id=second, text="Drivers vary a lot.\r\n")
    item = store.item(item_id)
    assert item["status"] == "edited"
    assert [(r["reviewer"], r["decision"], r["final_text"]) for r in item["reviews"]] == [
        ("alice", "edited", "Drivers vary a lot.")
    ]
    review_id = item["reviews"][0]["id"]
    changes = {(a["field"], a["old"], a["new"]) for a in store.audit("review", review_id)}
    assert ("decision", "accepted", "edited") in changes
    assert ("final_text", "People can drive.", "Drivers vary a lot.") in changes
    assert all(a["actor"] == "alice" and a["at"] for a in store.audit("review", review_id))
    statuses = [(a["old"], a["new"]) for a in store.audit("item", item_id)]
    assert statuses == [(None, "pending"), ("pending", "accepted"), ("accepted", "edited")]

    store.decide(item_id, "bob", "rejected", 2)
    item = store.item(item_id)
    assert item["status"] == "rejected"
    assert [(r["reviewer"], r["decision"]) for r in item["reviews"]] == [
        ("alice", "edited"),
        ("bob", "rejected"),
    ]


def test_an_edit_that_changes_nothing_is_an_acceptance(tmp_path):
    store = Store(tmp_path / "a.db")
    item_id = add_item(store, "Old people are slow.", ("People learn at their own pace.",))
    candidate = store.item(item_id)["candidates"][0]
    saved = store.decide(
        item_id, "alice", "edited", 0, candidate_id=candidate["id"], text=candidate["text"] + "\n"
    )
    assert saved["decision"] == store.item(item_id)["status"] == "accepted"


@pytest.mark.parametrize(
    ("decision", "candidate", "text", "message"),
    [
        ("edited", None, "   ", "empty"),
        ("accepted", None, None, "candidate"),
        ("accepted", "other", None, "does not belong"),
        ("maybe", None, None, "unknown decision"),
    ],
)
def test_invalid_decisions_store_nothing(tmp_path, decision, candidate, text, message):
    store = Store(tmp_path / "a.db")
    item_id = add_item(store, "first text")
    other = add_item(store, "second text")
    candidate_id = store.item(other)["candidates"][0]["id"] if candidate == "other" else None
    with pytest.raises(MbiasError, match=message):
        store.decide(item_id, "alice", decision, 0, candidate_id=candidate_id, text=text)
    item = store.item(item_id)
    assert (item["status"], item["version"], item["reviews"]) == ("pending", 0, [])


def test_a_stale_version_is_a_conflict_and_saves_nothing(tmp_path):
    store = Store(tmp_path / "a.db")
    item_id = add_item(store, "Immigrants are criminals.", ("Some people commit crimes.",))
    candidate = store.item(item_id)["candidates"][0]["id"]
    store.decide(item_id, "alice", "accepted", 0, candidate_id=candidate)
    audit_before = store.audit()
    with pytest.raises(Conflict, match="alice recorded 'accepted'"):
        store.decide(item_id, "bob", "rejected", 0)
    item = store.item(item_id)
    assert (item["status"], item["version"], len(item["reviews"])) == ("accepted", 1, 1)
    assert store.audit() == audit_before


def test_concurrent_decisions_on_one_version_let_exactly_one_through(tmp_path):
    store = Store(tmp_path / "a.db")
    item_id = add_item(store, "Poor people make bad choices.")
    outcomes: list[str] = []
    barrier = threading.Barrier(6)

    def reviewer(name: str) -> None:
        barrier.wait()
        try:
            store.decide(item_id, name, "rejected", 0)
            outcomes.append("saved")
        except Conflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=reviewer, args=(f"r{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["conflict"] * 5 + ["saved"]
    item = store.item(item_id)
    assert (item["version"], len(item["reviews"])) == (1, 1)


def test_queue_skips_reviewed_items_and_wraps_round(tmp_path):
    store = Store(tmp_path / "a.db")
    ids = [add_item(store, f"text {i}") for i in range(3)]
    assert store.next_item("alice") == ids[0]
    assert store.next_item("alice", after=ids[0]) == ids[1]
    assert store.next_item("alice", after=ids[2]) == ids[0]  # skipping past the end wraps
    store.decide(ids[0], "alice", "rejected", 0)
    assert store.next_item("bob") == ids[1]  # one review is enough by default
    assert store.next_item("bob", reviews_needed=2) == ids[0]  # ... a second reviewer is asked when wanted
    assert store.next_item("alice", reviews_needed=2) == ids[1]  # but never the same one twice
    assert store.progress("alice") == {"total": 3, "reviewed": 1, "mine": 1}


def test_the_database_is_sqlite_in_wal_mode_with_foreign_keys(tmp_path):
    store = Store(tmp_path / "a.db")
    add_item(store, "x")
    db = sqlite3.connect(store.path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with pytest.raises(sqlite3.IntegrityError):
        db.execute("PRAGMA foreign_keys = ON")
        db.execute(
            "INSERT INTO candidates (item_id, position, text, origin, created_at)"
            " VALUES (99, 0, 'x', 'x', 'now')"
        )


def test_a_file_that_is_not_an_annotation_database_is_a_one_line_error(tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_text("not sqlite at all" * 100)
    with pytest.raises(MbiasError, match="not an SQLite database"):
        Store(junk)
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)")
    with pytest.raises(MbiasError, match="not an mbias annotation database"):
        Store(other)
    with pytest.raises(MbiasError, match="no such annotation database"):
        Store(tmp_path / "missing.db", create=False)


# -- statistics and export ----------------------------------------------------------------------------
def test_stats_count_reviewers_and_agreement(tmp_path):
    store = Store(tmp_path / "a.db")
    agreed, split, single = (add_item(store, t, ("fair",)) for t in ("one", "two", "three"))
    cand = {i: store.item(i)["candidates"][0]["id"] for i in (agreed, split, single)}
    store.decide(agreed, "alice", "accepted", 0, candidate_id=cand[agreed])
    store.decide(agreed, "bob", "accepted", 1, candidate_id=cand[agreed])
    store.decide(split, "alice", "accepted", 0, candidate_id=cand[split])
    store.decide(split, "bob", "rejected", 1)
    store.decide(single, "alice", "edited", 0, text="better")
    stats = review_stats(store)
    assert stats["reviewers"] == {
        "alice": {"total": 3, "accepted": 2, "edited": 1, "rejected": 0},
        "bob": {"total": 2, "accepted": 1, "edited": 0, "rejected": 1},
    }
    assert stats["acceptance_rate"] == pytest.approx(4 / 5)
    assert (stats["double_reviewed"], stats["pairs"]) == (2, 2)
    assert stats["decision_agreement"] == pytest.approx(0.5)
    assert stats["items"] == {"pending": 0, "accepted": 1, "edited": 1, "rejected": 1}


def test_cohen_kappa():
    assert cohen_kappa([("a", "a"), ("b", "b")]) == pytest.approx(1.0)
    assert cohen_kappa([("a", "b"), ("b", "a")]) == pytest.approx(-1.0)
    assert cohen_kappa([("a", "a"), ("a", "a")]) is None  # one label only: chance agreement is total
    assert cohen_kappa([]) is None


def test_export_writes_kept_pairs_with_provenance(tmp_path):
    store = Store(tmp_path / "a.db")
    accepted = add_item(
        store,
        "Women are bad drivers.",
        ("Drivers vary.",),
        source_file="in.jsonl",
        source_id="7",
        group="women",
        dimension="gender",
        meta={"guideline": "1.0"},
    )
    edited = add_item(store, "Boomers ruined it.", ("Policies had costs.",))
    rejected = add_item(store, "Nonsense.", ("Nonsense!",))
    add_item(store, "Still pending.")
    candidate = store.item(accepted)["candidates"][0]["id"]
    store.decide(accepted, "alice", "accepted", 0, candidate_id=candidate)
    store.decide(accepted, "bob", "accepted", 1, candidate_id=candidate)
    store.decide(
        edited,
        "alice",
        "edited",
        0,
        candidate_id=store.item(edited)["candidates"][0]["id"],
        text="Some policies had costs.",
    )
    store.decide(rejected, "alice", "rejected", 0)

    output = tmp_path / "train.jsonl"
    result = runner.invoke(app, ["export", "--db", str(store.path), "--output", str(output)])
    assert result.exit_code == 0, result.output
    rows = read_records(output)
    assert [(r["biased_text"], r["debiased_text"]) for r in rows] == [
        ("Women are bad drivers.", "Drivers vary."),
        ("Boomers ruined it.", "Some policies had costs."),
    ]
    first, second = rows
    assert first["text"] == first["biased_text"]  # read_records picks the source text for training
    assert (first["item_id"], first["status"], first["source_file"], first["source_id"]) == (
        accepted,
        "accepted",
        "in.jsonl",
        "7",
    )
    assert (first["group"], first["dimension"], first["meta"]) == ("women", "gender", {"guideline": "1.0"})
    assert (first["reviewers"], first["decisions"], first["candidate_origin"]) == (
        ["alice", "bob"],
        ["accepted"] * 2,
        "test",
    )
    assert first["created_at"] <= first["reviewed_at"]
    assert (second["status"], second["candidate_origin"], second["reviewers"]) == (
        "edited",
        "edited:test",
        ["alice"],
    )

    assert [p["item_id"] for p in training_pairs(store, min_reviews=2)] == [accepted]
    store.decide(rejected, "bob", "accepted", 1, candidate_id=store.item(rejected)["candidates"][0]["id"])
    assert store.item(rejected)["status"] == "accepted"  # bob decided last, but alice rejected it
    assert rejected not in [p["item_id"] for p in training_pairs(store, min_reviews=2)]
    for suffix in ("csv", "parquet"):
        path = tmp_path / f"train.{suffix}"
        result = runner.invoke(
            app, ["export", "--db", str(store.path), "-o", str(path), "--min-reviews", "2"]
        )
        assert result.exit_code == 0, result.output
        assert [r["debiased_text"] for r in read_records(path)] == ["Drivers vary."]


def test_export_errors_are_one_line(tmp_path):
    store = Store(tmp_path / "a.db")
    add_item(store, "pending only")
    (tmp_path / "t.jsonl").write_text("an earlier export\n", encoding="utf-8")
    result = runner.invoke(app, ["export", "--db", str(store.path), "-o", str(tmp_path / "t.jsonl")])
    assert isinstance(result.exception, MbiasError) and "nothing written" in str(result.exception)
    assert (tmp_path / "t.jsonl").read_text(encoding="utf-8") == "an earlier export\n"  # left as it was
    result = runner.invoke(
        app, ["export", "--db", str(tmp_path / "missing.db"), "-o", str(tmp_path / "t.jsonl")]
    )
    assert isinstance(result.exception, MbiasError) and "no such annotation database" in str(result.exception)
    assert not (tmp_path / "missing.db").exists()


@pytest.mark.parametrize(
    ("source", "rewrite"),
    [
        ("Women are bad drivers, honestly.", "Drivers of any gender make mistakes, honestly."),
        ("same text", "same text"),
        ("", "new words"),
        ("<b>x</b> & y", "x & y"),
    ],
)
def test_word_diff_rebuilds_both_texts(source, rewrite):
    segments = word_diff(source, rewrite)
    assert "".join(t for kind, t in segments if kind != "del") == rewrite
    assert "".join(t for kind, t in segments if kind != "ins") == source
    assert ("del" in {k for k, _ in segments}) == (source != rewrite and bool(source))
