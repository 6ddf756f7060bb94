"""Embedded judges: head math, thresholds, storage, training helpers, calibration rule, score CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mbias.errors import MbiasError
from mbias.judges import embedded as embedded_module
from mbias.judges import embedding_cache as cache_module
from mbias.judges import load_judge
from mbias.judges.calibrate import calibrate, macro_balanced_accuracy
from mbias.judges.embedded import EmbeddedJudge
from mbias.judges.heads import Head, HeadSet
from mbias.judges.metrics import binary_metrics
from mbias.judges.train_data import (
    IDENTITY_TEMPLATES_PER_DESCRIPTOR,
    Example,
    advice,
    answer_prose,
    bias_pairs,
    clean,
    identity_mentions,
)
from mbias.judges.train_heads import _fold_scaler, balanced_weights
from mbias.splits import is_heldout

DIM = 4


def unit(index: int) -> np.ndarray:
    vector = np.zeros(DIM, dtype=np.float32)
    vector[index] = 1.0
    return vector


def linear_head(direction: int, scale: float = 10.0, bias: float = -5.0, threshold: float = 0.5) -> Head:
    """Scores texts along one axis: logit = scale * x[direction] + bias."""
    weight = (unit(direction) * scale).reshape(DIM, 1)
    return Head(layers=[(weight, np.array([bias], dtype=np.float32))], threshold=threshold)


def hand_heads(tox_threshold: float = 0.5, bias_threshold: float = 0.5) -> HeadSet:
    return HeadSet(
        heads={
            "toxicity": linear_head(0, threshold=tox_threshold),
            "bias": linear_head(1, threshold=bias_threshold),
        },
        encoder="fake",
    )


def test_logistic_head_scores_its_direction_high_and_others_low():
    head = linear_head(0)
    probs = head.predict_proba(np.stack([unit(0), unit(1), -unit(0)]))
    assert probs[0] == pytest.approx(1 / (1 + np.exp(-5.0)), rel=1e-6)
    assert probs[1] == pytest.approx(1 / (1 + np.exp(5.0)), rel=1e-6)
    assert probs[2] < probs[1] < 0.5 < probs[0]


def test_mlp_head_applies_relu_between_layers_only():
    # hidden = relu([x0 - x1, x1 - x0]); logit = 2*h0 - 3*h1 - 1 (no ReLU on the output)
    first = (np.array([[1, -1], [-1, 1], [0, 0], [0, 0]], dtype=np.float32), np.zeros(2, dtype=np.float32))
    second = (np.array([[2], [-3]], dtype=np.float32), np.array([-1], dtype=np.float32))
    head = Head(layers=[first, second], kind="mlp")
    logits = head.logits(np.stack([unit(0), unit(1), np.zeros(DIM, dtype=np.float32)]))
    assert logits.tolist() == pytest.approx([1.0, -4.0, -1.0])


def test_folded_scaler_gives_the_same_scores_on_raw_embeddings():
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(20, DIM)).astype(np.float32)
    mean, scale = raw.mean(axis=0), raw.std(axis=0) + 1e-6
    layers = [(rng.normal(size=(DIM, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32))]
    layers.append((rng.normal(size=(3, 1)).astype(np.float32), np.zeros(1, dtype=np.float32)))
    on_scaled = Head(layers=layers).predict_proba((raw - mean) / scale)
    on_raw = Head(layers=_fold_scaler(layers, mean, scale)).predict_proba(raw)
    assert on_raw == pytest.approx(on_scaled, abs=1e-5)


def test_headset_round_trip_keeps_weights_thresholds_and_metadata(tmp_path):
    heads = hand_heads(tox_threshold=0.3, bias_threshold=0.7)
    heads.metadata = {"validation": {"toxicity": {"roc_auc": 0.9}}}
    heads.save(tmp_path)
    loaded = HeadSet.load(tmp_path / "heads.json")
    assert {n: h.threshold for n, h in loaded.heads.items()} == {"toxicity": 0.3, "bias": 0.7}
    assert loaded.metadata == heads.metadata
    x = np.stack([unit(0), unit(1)])
    for name in heads.heads:
        assert loaded.heads[name].predict_proba(x) == pytest.approx(heads.heads[name].predict_proba(x))
    for spec in (f"embedded:{tmp_path}", f"embedded:{tmp_path / 'heads.json'}"):  # heads a user trained
        assert load_judge(spec).thresholds == {"toxicity": 0.3, "bias": 0.7}


def test_missing_heads_is_a_user_error(tmp_path):
    with pytest.raises(MbiasError, match="train-judges"):
        HeadSet.load(tmp_path / "heads.json")


def test_is_unsafe_uses_each_heads_own_threshold():
    judge = EmbeddedJudge(heads=hand_heads(tox_threshold=0.3, bias_threshold=0.8))
    assert judge.is_unsafe({"toxicity": 0.3, "bias": 0.0})  # at the threshold counts as unsafe
    assert not judge.is_unsafe({"toxicity": 0.29, "bias": 0.79})
    assert judge.is_unsafe({"toxicity": 0.0, "bias": 0.8})
    assert judge.labels({"toxicity": 0.5, "bias": 0.5}) == {"toxicity": 1, "bias": 0}
    # a screen's margin scales every head's threshold: 0.29 clears 0.3 but not 0.5 x 0.3
    assert judge.is_unsafe({"toxicity": 0.29, "bias": 0.0}, margin=0.5)
    assert judge.is_unsafe({"toxicity": 0.0, "bias": 0.41}, margin=0.5)
    assert not judge.is_unsafe({"toxicity": 0.14, "bias": 0.39}, margin=0.5)
    # per head: the named head's threshold is scaled, any other head keeps its own
    assert judge.is_unsafe({"toxicity": 0.0, "bias": 0.41}, margin={"bias": 0.5})
    assert not judge.is_unsafe({"toxicity": 0.29, "bias": 0.39}, margin={"bias": 0.5})
    assert judge.is_unsafe({"toxicity": 0.3, "bias": 0.0}, margin={"bias": 0.5})


def category_head(threshold: float = 0.5) -> Head:
    """A softmax over the ten harm categories: the first scores 8 * x[3], the others 0."""
    from mbias.judges.categories import CATEGORIES

    weight = np.zeros((DIM, len(CATEGORIES)), dtype=np.float32)
    weight[3, 0] = 8.0
    bias = np.zeros(len(CATEGORIES), dtype=np.float32)
    return Head(layers=[(weight, bias)], threshold=threshold, kind="softmax", labels=list(CATEGORIES))


def test_the_category_heads_top_probability_decides_what_resembles_a_harm(monkeypatch):
    head = category_head(0.5)
    top = head.top_probability(np.stack([unit(3), unit(2), 0.25 * unit(3)]))
    assert top == pytest.approx([np.e**8 / (np.e**8 + 9), 0.1, np.e**2 / (np.e**2 + 9)], rel=1e-5)
    heads = hand_heads()
    heads.category = head
    monkeypatch.setattr(embedded_module, "encode", CountingEncoder({"sure": unit(3), "unsure": unit(2)}))
    assert EmbeddedJudge(heads=heads).resembles_harm(["sure", "unsure"]) == [True, False]
    heads.category = None  # no category head: no say, every suspect goes on
    assert EmbeddedJudge(heads=heads).resembles_harm(["sure", "unsure"]) == [True, True]


def test_a_category_threshold_saved_before_it_gated_suspects_gates_none(tmp_path):
    heads = hand_heads()
    heads.category = category_head(0.38)
    heads.save(tmp_path)
    assert HeadSet.load(tmp_path / "heads.json").category.threshold == 0.38
    document = json.loads((tmp_path / "heads.json").read_text())
    del document["category"]["gates_suspects"]  # as written before: 0.5, unused
    document["category"]["threshold"] = 0.5
    (tmp_path / "heads.json").write_text(json.dumps(document))
    assert HeadSet.load(tmp_path / "heads.json").category.threshold == 0.0


def test_the_suspect_threshold_keeps_nine_in_ten_biased_suspects_of_the_dev_split():
    """Only biased texts the default screen catches by its margin alone count (bias head: logit
    10 x[1] - 5, threshold 0.5, margin 0.35); fair suspects and flagged texts do not."""
    from mbias.judges.categories import suspect_threshold

    heads = hand_heads()
    heads.category = category_head()
    suspect = [0.4 * unit(1) + (i / 20) * unit(3) for i in range(20)]  # bias score 0.27, in the band
    others = [unit(1), 0.4 * unit(1), 0.4 * unit(1) + unit(3), np.zeros(DIM, dtype=np.float32)]
    rows = np.stack(suspect + others).astype(np.float32)
    labels = [1] * 20 + [1, 0, 0, 1]  # flagged; a fair suspect, sure or not; a clean text
    dev = [Example(f"text {i}", label, "dev") for i, label in enumerate(labels)]
    threshold = suspect_threshold(heads, dev, rows)
    top = heads.category.top_probability(np.stack(suspect))
    assert (top >= threshold).sum() >= 18 and (top >= threshold + 0.01).sum() < 18
    assert suspect_threshold(heads, dev[20:], rows[20:]) == 0.0  # no biased suspect: every one goes on


class CountingEncoder:
    """Stands in for the sentence encoder: a fixed vector per text, and a log of what it encoded."""

    def __init__(self, vectors: dict[str, np.ndarray]):
        self.vectors = vectors
        self.calls: list[list[str]] = []
        self.adapters: list = []

    def __call__(self, texts: list[str], adapter=None) -> np.ndarray:
        self.calls.append(list(texts))
        self.adapters.append(adapter)
        return np.stack([self.vectors[t] for t in texts]) if texts else np.zeros((0, DIM), np.float32)


def test_score_and_similarity_encode_each_distinct_text_once(monkeypatch):
    fake = CountingEncoder({"toxic": unit(0), "biased": unit(1), "plain": unit(2)})
    monkeypatch.setattr(embedded_module, "encode", fake)
    judge = EmbeddedJudge(heads=hand_heads())
    scores = judge.score(["toxic", "biased", "toxic"])
    assert fake.calls == [["toxic", "biased"]]
    assert scores[0]["toxicity"] > 0.5 > scores[0]["bias"]
    assert scores[1]["bias"] > 0.5 > scores[1]["toxicity"]
    assert scores[2] == scores[0]
    similarity = judge.similarity(["toxic", "toxic"], ["toxic", "plain"])
    assert fake.calls[1:] == [["plain"]]  # "toxic" came from the memo
    assert similarity == pytest.approx([1.0, 0.0])
    with pytest.raises(MbiasError):
        judge.similarity(["a"], [])


def test_heads_read_the_tuned_encoder_and_similarity_the_packaged_one(tmp_path, monkeypatch):
    """Meaning kept must not move with the heads' fine-tuning: similarity encodes without the
    adapter, scores with it, each with its own memo."""
    fake = CountingEncoder({"toxic": unit(0), "plain": unit(2)})
    monkeypatch.setattr(embedded_module, "encode", fake)
    heads = hand_heads()
    heads.adapter = tmp_path / "encoder"
    judge = EmbeddedJudge(heads=heads)
    judge.score(["toxic"])
    judge.similarity(["toxic"], ["plain"])
    assert fake.adapters == [tmp_path / "encoder", None]
    assert fake.calls == [["toxic"], ["toxic", "plain"]]


def test_headset_keeps_its_encoder_adapter_and_refuses_a_missing_one(tmp_path):
    heads = hand_heads()
    heads.adapter = tmp_path / "encoder"
    heads.adapter.mkdir()
    heads.save(tmp_path)
    assert json.loads((tmp_path / "heads.json").read_text())["encoder_adapter"] == "encoder"
    assert HeadSet.load(tmp_path / "heads.json").adapter == tmp_path / "encoder"
    heads.adapter.rmdir()
    with pytest.raises(MbiasError, match="encoder adapter"):
        HeadSet.load(tmp_path / "heads.json")


def test_embedding_cache_reuses_vectors_saved_on_disk(tmp_path, monkeypatch):
    fake = CountingEncoder({"a": unit(0), "b": unit(1)})
    monkeypatch.setattr(cache_module, "encode", fake)
    first = cache_module.EmbeddingCache(tmp_path).embed(["a", "b", "a"])
    again = cache_module.EmbeddingCache(tmp_path).embed(["b", "a"])
    assert fake.calls == [["a", "b"]]
    assert again.tolist() == [first[1].tolist(), first[0].tolist()]


def test_balanced_weights_equalise_classes_and_scale_sources_by_sqrt_size():
    examples = [Example(f"p{i}", int(i < 30), "big") for i in range(100)]
    examples += [Example(f"s{i}", int(i < 2), "small") for i in range(4)]
    weights = balanced_weights(examples)
    total = {}
    for example, weight in zip(examples, weights):
        total[(example.source, example.label)] = total.get((example.source, example.label), 0.0) + weight
    assert total[("big", 0)] == pytest.approx(total[("big", 1)])
    assert total[("small", 0)] == pytest.approx(total[("small", 1)])
    assert total[("big", 1)] / total[("small", 1)] == pytest.approx(np.sqrt(100 / 4))


def test_clean_drops_test_set_texts_duplicates_and_conflicting_labels():
    examples = [
        Example("Same text", 1, "a"),
        Example("same  TEXT", 1, "b"),  # duplicate after normalisation
        Example("both labels", 1, "a"),
        Example("Both labels", 0, "b"),
        Example("from the test set", 1, "a"),
        Example("   ", 0, "a"),
        Example("fine", 0, "a"),
    ]
    kept, dropped = clean(examples, excluded={"from the test set"})
    assert [e.text for e in kept] == ["Same text", "fine"]
    assert dropped == {"empty": 1, "test_set": 1, "duplicate": 1, "conflicting_label": 2}


def test_bias_pairs_label_rewrites_and_keeps_and_skip_a_half_written_line(tmp_path):
    rows = [
        {
            "biased_text": "old people cannot use phones",
            "debiased_text": "some people need help with phones",
            "action": "rewrite",
        },
        {
            "biased_text": "the shop opens at nine",
            "debiased_text": "the shop opens at nine",
            "action": "keep",
        },
    ]
    text = "\n".join(json.dumps(r) for r in rows) + '\n{"biased_text": "cut off'
    (tmp_path / "x.jsonl").write_text(text, encoding="utf-8")
    examples = list(bias_pairs(tmp_path))
    assert [(e.text, e.label) for e in examples] == [
        ("old people cannot use phones", 1),
        ("some people need help with phones", 0),
        ("the shop opens at nine", 0),
    ]
    assert list(bias_pairs(tmp_path / "absent")) == []


def test_paired_files_are_one_source_and_answer_prose_a_fair_source_of_its_own(tmp_path):
    """Both paired files feed the "advice" source in file order (a stereotype file is optional),
    and prose.jsonl is its own fair-only source; a judge folder without them still loads."""

    def write(name: str, rows: list[dict]) -> None:
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")

    write("advice.jsonl", [{"biased_text": "Hire the young ones.", "fair_text": "Hire on skills."}])
    assert [(e.text, e.label, e.source) for e in advice(tmp_path)] == [
        ("Hire the young ones.", 1, "advice"),
        ("Hire on skills.", 0, "advice"),
    ]
    write("counter-speech.jsonl", [{"biased_text": "X are lazy.", "fair_text": "X are not lazy."}])
    write("prose.jsonl", [{"kind": "answer-prose", "text": "Carry cash in Cuba."}])
    assert [e.text for e in advice(tmp_path)][2:] == ["X are lazy.", "X are not lazy."]
    assert [e.text for e in advice(tmp_path, ("counter-speech.jsonl",))] == ["X are lazy.", "X are not lazy."]
    assert [(e.text, e.label, e.source) for e in answer_prose(tmp_path)] == [
        ("Carry cash in Cuba.", 0, "answer-prose")
    ]
    assert list(answer_prose(tmp_path / "missing")) == []


def test_identity_mentions_skip_held_out_dispreferred_and_nonce_descriptors(tmp_path):
    words = [f"tall{i}" for i in range(40)]
    seen = [w for w in words if not is_heldout(w)][:2]
    unseen = [w for w in words if is_heldout(w)][:1]
    descriptors = {
        "body_type": [*seen, *unseen],
        "age": {"old": [{"descriptor": "elderly", "preference": "dispreferred"}, {"descriptor": "older"}]},
        "nonce": ["blicket"],
    }
    folder = tmp_path / "holistic-bias" / "v1.1"
    folder.mkdir(parents=True)
    (folder / "descriptors.json").write_text(json.dumps(descriptors), encoding="utf-8")
    examples = list(identity_mentions(tmp_path))
    named = {
        w for w in [*seen, *unseen, "elderly", "older", "blicket"] for e in examples if f" {w} " in e.text
    }
    expected = {w for w in [*seen, "older"] if not is_heldout(w)}
    assert named == expected
    assert len(examples) == IDENTITY_TEMPLATES_PER_DESCRIPTOR * len(expected)
    assert {e.label for e in examples} == {0} and {e.source for e in examples} == {"identity"}
    assert len({e.text for e in examples}) == len(examples)  # distinct templates per descriptor


class WordEncoder:
    """Stands in for the sentence encoder on any text: "idiot" points one way, "printer" another,
    "cats" a third; a unit-length mix of the words a text holds."""

    AXES = {"idiot": 0, "printer": 1, "cats": 2}

    def __call__(self, texts: list[str], adapter=None) -> np.ndarray:
        rows = np.full((len(texts), DIM), 0.1, dtype=np.float32)
        for row, text in zip(rows, texts):
            for word, axis in self.AXES.items():
                row[axis] += text.count(word)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True) if texts else rows


def _training_sheet(tmp_path: Path) -> list[dict]:
    """Readers' labels of 120 rewrites: "idiot" is what readers call unsafe, a rewrite about cats
    instead of the printer lost the meaning; one held-out input (never trains) and one held-out
    sheet at the top (never read)."""
    rows = []
    training = [i for i in range(200) if not is_heldout(f"you idiot fix the printer {i}")][:40]
    for i in training:
        text = f"you idiot fix the printer {i}"
        for candidate, unsafe, kept in (
            (f"you idiot fix the printer {i}", 1, 1),
            (f"please fix the printer {i}", 0, 1),
            (f"cats are nice {i}", 0, 0),
        ):
            rows.append({"text": text, "candidate": candidate, "unsafe": unsafe, "meaning_kept": kept})
    held = next(f"idiot printer {i}" for i in range(1000) if is_heldout(f"idiot printer {i}"))
    extra = [
        {"text": held, "candidate": "held out", "unsafe": 0, "meaning_kept": 1},
        {"text": "a", "candidate": "no meaning label", "unsafe": 1, "meaning_kept": None},
        {"text": "b", "candidate": "   ", "unsafe": 1, "meaning_kept": 0},
    ]
    (tmp_path / "training-r1").mkdir()
    lines = "\n".join(json.dumps(r) for r in rows + extra)
    (tmp_path / "training-r1" / "sheet-1.jsonl").write_text(lines)
    (tmp_path / "toxigen-hate.jsonl").write_text(json.dumps(rows[0] | {"candidate": "top sheet"}))
    return rows


def test_reader_heads_learn_the_readers_labels_of_training_rewrites_and_order_candidates(
    tmp_path, monkeypatch
):
    from mbias.judges.readers import fit_reader_heads, pair_features, reader_rows

    monkeypatch.setattr(embedded_module, "encode", WordEncoder())
    labelled = _training_sheet(tmp_path)
    rows = reader_rows(tmp_path)
    assert [(t, c, u, k) for t, c, u, k in rows] == [
        (r["text"], r["candidate"], r["unsafe"], r["meaning_kept"]) for r in labelled
    ]  # only both-ways labels of training inputs, from training sheets
    judge = EmbeddedJudge(heads=hand_heads())
    assert judge.assess(["x"], ["y"]) is None  # no reader heads: the Debiaser orders by similarity
    features = pair_features(judge, [r[0] for r in rows], [r[1] for r in rows])
    heads, report = fit_reader_heads(features, rows)
    assert report["unsafe"]["cv_roc_auc"] > 0.9 and report["kept"]["cv_roc_auc"] > 0.9
    judge.heads.readers = heads
    judge.heads.save(tmp_path / "judge")
    loaded = EmbeddedJudge(tmp_path / "judge" / "heads.json")
    source = "you idiot fix the printer 99"
    odds = loaded.assess([source] * 3, [source, "please fix the printer 99", "cats are nice 99"])
    assert odds == pytest.approx(
        judge.assess([source] * 3, [source, "please fix the printer 99", "cats are nice 99"])
    )
    assert odds[1] > 0.5 > max(odds[0], odds[2])  # safe and faithful beats a copy and a new topic
    assert loaded.assess([], []) == []


def test_refitting_the_reader_heads_keeps_the_rest_of_the_judge(tmp_path, monkeypatch):
    """`train-judges --heads readers`: the text heads stay as they were, the reader heads and their
    cross-validated figures are added, and a folder with too few labelled rewrites is refused."""
    from mbias.commands.train_judges import _train_readers

    monkeypatch.setattr(embedded_module, "encode", WordEncoder())
    _training_sheet(tmp_path)
    headset = hand_heads()
    _train_readers(headset, tmp_path)
    headset.save(tmp_path / "judge")
    loaded = HeadSet.load(tmp_path / "judge" / "heads.json")
    assert set(loaded.readers) == {"unsafe", "kept"}
    assert loaded.metadata["validation"]["readers"]["rewrites"] == 120
    x = np.stack([unit(0), unit(1)])
    for name, head in hand_heads().heads.items():
        assert loaded.heads[name].predict_proba(x) == pytest.approx(head.predict_proba(x))
    (tmp_path / "few" / "training-r1").mkdir(parents=True)
    (tmp_path / "few" / "training-r1" / "sheet-1.jsonl").write_text(
        json.dumps({"text": "t", "candidate": "c", "unsafe": 0, "meaning_kept": 1})
    )
    with pytest.raises(MbiasError, match="need 50 or more"):
        _train_readers(hand_heads(), tmp_path / "few")


def test_train_judges_refits_reader_heads_only_with_reads(tmp_path):
    result = _mbias("train-judges", "--heads", "readers", "--output", str(tmp_path))
    assert result.returncode == 2 and "--heads readers needs --reads" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_binary_metrics_at_a_threshold():
    labels = np.array([0, 0, 0, 1, 1])
    probs = np.array([0.1, 0.2, 0.3, 0.6, 0.9])
    figures = binary_metrics(labels, probs, 0.25)  # predicts 0.3, 0.6, 0.9 positive
    assert figures["accuracy"] == pytest.approx(0.8)
    assert figures["f1"] == pytest.approx(0.8)
    assert figures["roc_auc"] == 1.0
    assert binary_metrics(labels, probs, 0.45)["balanced_accuracy"] == 1.0


def test_macro_balanced_accuracy_counts_every_source_alike():
    """A big source that wants a low threshold must not outvote a small one-class source of fair
    texts: each source counts once."""
    grid = np.array([0.25, 0.45, 0.65])
    labels = np.array([0, 0, 1, 1, 1, 1, 0])
    probs = np.array([0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.5])
    sources = np.array(["big"] * 6 + ["fair"])
    scores = macro_balanced_accuracy(labels, probs, sources, grid)
    # big: 0.25 -> (TNR 0.5 + TPR 1)/2, 0.45 -> (1 + 0.75)/2, 0.65 -> (1 + 0.25)/2; fair: 0, 0, 1
    assert scores == pytest.approx([(0.75 + 0) / 2, (0.875 + 0) / 2, (0.625 + 1) / 2])


def test_fair_only_sources_count_together_as_one_source():
    """A second file of fair sentences must not outvote the labelled sources: sources of one
    class share one place in the average, so adding one moves the threshold only through its
    texts."""
    grid = np.array([0.25, 0.45, 0.65])
    labels = np.array([0, 0, 1, 1, 1, 1, 0, 0])
    probs = np.array([0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.5, 0.3])
    sources = np.array(["big"] * 6 + ["fair"] + ["prose"])
    scores = macro_balanced_accuracy(labels, probs, sources, grid)
    # big as above; fair: 0, 0, 1 and prose: 0, 1, 1 share one place: 0, 0.5, 1
    assert scores == pytest.approx([(0.75 + 0) / 2, (0.875 + 0.5) / 2, (0.625 + 1) / 2])


def _texts_in(split, count: int) -> list[str]:
    """The first ``count`` texts "sentence N" that the real split function puts in ``split``."""
    return [t for t in (f"sentence {n}" for n in range(1000)) if split(t)][:count]


def test_calibrate_sets_thresholds_from_dev_texts_only():
    """Held-out and training texts must not move a threshold; dev texts must."""
    from mbias.splits import is_dev, is_heldout

    dev, held = _texts_in(is_dev, 2), _texts_in(is_heldout, 2)
    training = [t for t in _texts_in(lambda t: not (is_dev(t) or is_heldout(t)), 2)]
    # dev: fair 0.2, biased 0.3; held out and training would each ask for a threshold near 0.9
    strength = {dev[0]: 0.2, dev[1]: 0.3, held[0]: 0.85, held[1]: 0.95, training[0]: 0.85, training[1]: 0.95}
    examples = [Example(t, int(i % 2), "s") for pair in (dev, held, training) for i, t in enumerate(pair)]
    head = Head(layers=[(np.eye(DIM, 1, dtype=np.float32) * 20, np.array([-10.0], np.float32))])
    heads = HeadSet(heads={"bias": head}, encoder="fake")
    report = calibrate(
        heads, {"bias": examples}, lambda texts: np.stack([unit(0) * strength[t] for t in texts])
    )
    low, high = head.predict_proba(np.stack([unit(0) * 0.2, unit(0) * 0.3]))
    assert low < heads.heads["bias"].threshold <= high
    assert report["bias"]["dev_at_threshold"]["n"] == 2


def _mbias(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mbias.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


@pytest.mark.parametrize(
    ("content", "args", "message"),
    [
        ("text\nhello\n", ["--column", "comment"], "no column 'comment'"),
        ("", [], "cannot read"),
        ("text\n", [], "no rows"),
    ],
)
def test_score_bad_input_is_a_one_line_error_with_exit_code_2(tmp_path, content, args, message):
    path = tmp_path / "in.csv"
    path.write_text(content, encoding="utf-8")
    result = _mbias("score", "--input", str(path), *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "in.scored.csv").exists()


@pytest.mark.integration
def test_similarity_of_identical_text_is_one_and_unrelated_lower():
    judge = EmbeddedJudge()
    same, unrelated = judge.similarity(
        ["Women are bad drivers.", "Women are bad drivers."],
        ["Women are bad drivers.", "The train to Paris leaves at noon."],
    )
    assert same == pytest.approx(1.0, abs=1e-4)
    assert unrelated < 0.5


@pytest.mark.integration
def test_onnx_encoder_gives_the_transformers_models_vectors_without_importing_torch():
    """The runtime path (ONNX Runtime + tokenizers) against the packaged weights run in transformers
    with the model's recipe (mean pooling, unit length, 256 tokens), in a fresh process that must
    not import torch or transformers to embed."""
    import subprocess
    import sys

    import numpy as np
    import torch
    from transformers import AutoModel, AutoTokenizer

    from mbias.judges.encoder import encode, model_dir

    texts = ["Old people are slow with computers.", "The library opens at nine.", "Hi", "word " * 400]
    directory = str(model_dir())
    tokenizer, model = AutoTokenizer.from_pretrained(directory), AutoModel.from_pretrained(directory).eval()
    batch = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        states = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    expected = torch.nn.functional.normalize((states * mask).sum(1) / mask.sum(1), dim=1).numpy()
    assert np.abs(encode(texts) - expected).max() < 1e-5
    probe = "import sys; from mbias.judges.encoder import encode; encode(['hi']); "
    probe += "print('torch' in sys.modules, 'transformers' in sys.modules)"
    imported = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert imported.stdout.split() == ["False", "False"]


@pytest.mark.integration
def test_tuned_encoder_learns_its_labels_and_its_onnx_graph_is_the_merged_model(tmp_path):
    """A few steps of LoRA tuning on a separable toy set: the loss falls, the adapter names the hub
    model (no local path), and the cached ONNX graph gives the merged transformers model's vectors,
    which differ from the packaged encoder's."""
    import torch
    from transformers import AutoTokenizer

    from mbias.judges.encoder import encode, model_dir, torch_encoder
    from mbias.judges.tune_encoder import HUB_NAME, EncoderTuning, tune_encoder

    hateful = [f"people from group {n} are all criminals and should leave" for n in range(40)]
    kind = [f"the bakery on street {n} sells fresh bread every morning" for n in range(40)]
    examples = [Example(t, 1, "toy") for t in hateful] + [Example(t, 0, "toy") for t in kind]
    adapter = tmp_path / "encoder"
    summary = tune_encoder(
        {"toxicity": examples, "bias": examples}, [], adapter, EncoderTuning(batch_size=8, epochs=2)
    )
    assert summary["loss_last_tenth"] < summary["loss_first_tenth"]
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == HUB_NAME
    texts = ["Old people are slow with computers.", "The library opens at nine."]
    tuned = encode(texts, adapter)
    assert np.abs(tuned - encode(texts)).max() > 1e-3
    model = torch_encoder(adapter)
    batch = AutoTokenizer.from_pretrained(str(model_dir()))(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        states = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    expected = torch.nn.functional.normalize((states * mask).sum(1) / mask.sum(1), dim=1).numpy()
    assert np.abs(tuned - expected).max() < 1e-5


@pytest.mark.integration
def test_encoder_vectors_do_not_depend_on_batching_or_padding():
    """Texts are sorted by length into batches and padded: neither may change a vector or its row."""
    import numpy as np

    from mbias.judges.encoder import encode

    texts = ["A much longer sentence about the library opening hours on weekdays.", "Short one.", "x " * 400]
    together = encode(texts, batch_size=2)
    alone = np.stack([encode([t])[0] for t in texts])
    assert together.shape == (3, 384)
    assert np.allclose(together, alone, atol=1e-5)
    assert np.allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)


@pytest.mark.integration
def test_encoder_batches_texts_of_equal_token_counts_and_pads_each_batch_to_its_own_longest(monkeypatch):
    """Batches follow token counts, not characters: a short word of many tokens does not share a
    batch with short sentences of few, so padding stays at its minimum."""
    import numpy as np

    from mbias.judges import encoder

    # by characters these pair as (4, 5), (15, 12), (10, 19) tokens; by tokens (4, 5), (10, 12), (15, 19)
    texts = [
        "Hi there.",
        "antidisestablishmentarianism",
        "A b c d e f g h i j k l.",
        "Pneumonoultramicroscopicsilicovolcanoconiosis",
        "I am at it if so we go on.",
        "Yes.",
    ]
    tokenizer, session, _, _ = encoder.load_encoder(None)
    counts = [len(tokenizer.encode(t).ids) for t in texts]
    widths = []

    class Spy:
        def run(self, outputs, feed):
            mask = feed["attention_mask"]
            assert (mask.sum(1) > 0).all() and mask.shape[1] == mask.sum(1).max()  # padded to its own longest
            widths.append(mask.shape)
            return session.run(outputs, feed)

    monkeypatch.setattr(encoder, "load_encoder", lambda adapter=None: (tokenizer, Spy(), 384, 0))
    vectors = encoder.encode(texts, batch_size=2)
    ranked = sorted(counts)
    assert widths == [(2, ranked[1]), (2, ranked[3]), (2, ranked[5])]
    monkeypatch.undo()
    assert np.allclose(vectors, np.stack([encoder.encode([t])[0] for t in texts]), atol=1e-5)


@pytest.mark.integration
def test_score_cli_end_to_end_on_a_small_csv(tmp_path):
    import pandas as pd

    path = tmp_path / "in.csv"
    pd.DataFrame(
        {
            "id": ["a", "b", "c"],
            "comment": [
                "you are a stupid worthless idiot, shut up",
                "",
                "The library opens at nine on Mondays.",
            ],
        }
    ).to_csv(path, index=False)
    result = _mbias(
        "score", "--input", str(path), "--column", "comment", "--output", str(tmp_path / "out.jsonl")
    )
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a", "b", "c"]
    insult, empty, plain = rows
    assert empty["error"] == "empty text" and empty["toxicity"] is None
    for row in (insult, plain):
        assert row["error"] is None
        assert 0.0 <= row["toxicity"] <= 1.0 and 0.0 <= row["bias"] <= 1.0
        assert row["toxicity_label"] in (0, 1) and row["bias_label"] in (0, 1)
    assert insult["toxicity"] > plain["toxicity"]
    text_mode = _mbias("score", "--format", "json", "The library opens at nine on Mondays.")
    assert text_mode.returncode == 0, text_mode.stderr
    assert json.loads(text_mode.stdout)["toxicity"] == pytest.approx(plain["toxicity"], abs=1e-3)
    # an answer whose one biased sentence comes after 300 clean ones, past the encoder's 256 tokens
    tail = "All women are stupid and worthless at every job."
    long = _mbias("score", "--format", "json", "The library opens at nine on Mondays. " * 300 + tail)
    answer = json.loads(long.stdout)
    assert answer["worst_sentence"] == tail and answer["bias_label"] == 1, answer


def test_train_judges_swaps_its_output_in_whole_and_a_stopped_run_changes_nothing(tmp_path):
    from mbias.commands.train_judges import _staged

    judge = tmp_path / "judges"
    (judge / "encoder").mkdir(parents=True)
    (judge / "encoder" / "adapter.safetensors").write_bytes(b"old encoder")
    for name, body in (("heads.json", "old heads"), ("heads.npz", "old weights"), ("README.md", "notes")):
        (judge / name).write_text(body)
    before = {p.relative_to(judge): p.read_bytes() for p in judge.rglob("*") if p.is_file()}

    with pytest.raises(KeyboardInterrupt), _staged(judge) as staging:  # Ctrl-C mid-run
        (staging / "encoder").mkdir()
        (staging / "encoder" / "adapter.safetensors").write_bytes(b"new encoder")
        raise KeyboardInterrupt
    assert {p.relative_to(judge): p.read_bytes() for p in judge.rglob("*") if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["judges"]  # no staging folder left behind

    with _staged(judge) as staging:
        assert sorted(p.name for p in staging.iterdir()) == ["README.md"]  # the old judge is not mixed in
        (staging / "heads.json").write_text("new heads")
    assert sorted(p.name for p in judge.iterdir()) == ["README.md", "heads.json"]
    assert (judge / "heads.json").read_text() == "new heads" and (judge / "README.md").read_text() == "notes"
    with _staged(judge, keep_trained=True) as staging:  # the category head alone: the rest stays
        (staging / "heads.json").write_text("newer heads")
    assert sorted(p.name for p in judge.iterdir()) == ["README.md", "heads.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["judges"]
    (tmp_path / "plain").mkdir()  # readable as any folder made here, not owner-only
    assert judge.stat().st_mode == (tmp_path / "plain").stat().st_mode
    import os

    os.chdir(judge)  # --output . names the folder it is run in
    try:
        with _staged(Path(".")) as staging:
            (staging / "heads.json").write_text("from here")
    finally:
        os.chdir(tmp_path)
    assert (judge / "heads.json").read_text() == "from here"


def test_the_worst_sentence_is_the_one_furthest_over_its_heads_threshold():
    from mbias.judges import score_by_sentence

    class Thresholded:
        thresholds = {"toxicity": 0.395, "bias": 0.615}

        def score(self, texts):
            table = {"Some people are like that.": (0.0, 0.60), "You are an idiot.": (0.45, 0.0)}
            return [dict(zip(("toxicity", "bias"), table.get(t, (0.0, 0.0)))) for t in texts]

    [(scores, worst)] = score_by_sentence(Thresholded(), ["Some people are like that. You are an idiot."])
    assert scores == {"toxicity": 0.45, "bias": 0.60}
    assert worst == "You are an idiot."  # over its threshold; bias 0.60 is the higher score, yet under 0.615
