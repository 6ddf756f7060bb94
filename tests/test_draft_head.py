"""The draft output head: the file it builds, and how its proposals are re-scored.

Unit tests write small GGUF files here; the end-to-end check against llama.cpp is an integration
test on the embedded model (tests/test_llamacpp.py covers the engine's other behaviour with it on).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from mbias.engines.draft_head import LEAD, ExactHead, build_draft_gguf, cached_draft_gguf, draftable
from mbias.engines.gguf_layout import read_layout

VOCAB, WIDTH = 96, 64


def write_model(path: Path, arch: str = "gemma3", width: int = WIDTH, tied: bool = True, seed: int = 0):
    """A GGUF with a few metadata kinds (a string array like a vocabulary included), a Q8_0 token
    embedding (float32 where the width does not fit Q8_0's blocks), a norm, and an output layer
    unless ``tied``; returns (path, the embedding as stored, in float32)."""
    import gguf
    from gguf.quants import dequantize, quantize

    rng = np.random.default_rng(seed)
    embedding = rng.normal(0, 0.05, (VOCAB, width)).astype(np.float32)
    q8 = gguf.GGMLQuantizationType.Q8_0 if width % 32 == 0 else gguf.GGMLQuantizationType.F32
    stored = quantize(embedding, q8)
    writer = gguf.GGUFWriter(path, arch)
    writer.add_block_count(1)
    writer.add_string("general.name", "tiny")
    writer.add_token_list([f"tok{i}" for i in range(VOCAB)])
    writer.add_array("tokenizer.ggml.scores", [float(i) for i in range(VOCAB)])
    writer.add_tensor("token_embd.weight", stored, raw_shape=stored.shape, raw_dtype=q8)
    writer.add_tensor("output_norm.weight", np.ones(width, np.float32))
    if not tied:
        writer.add_tensor("output.weight", embedding)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path, dequantize(stored, q8)


def test_only_tied_gemma3_models_with_32_wide_blocks_get_a_draft(tmp_path):
    assert draftable(write_model(tmp_path / "ok.gguf")[0])
    assert not draftable(write_model(tmp_path / "own-output.gguf", tied=False)[0])
    assert not draftable(write_model(tmp_path / "llama.gguf", arch="llama")[0])
    assert not draftable(write_model(tmp_path / "narrow.gguf", width=48)[0])


def test_draft_file_is_the_model_plus_a_q4_0_copy_of_the_embedding(tmp_path):
    from gguf import GGMLQuantizationType, GGUFReader
    from gguf.quants import dequantize

    base, embedding = write_model(tmp_path / "base.gguf")
    draft = build_draft_gguf(base, tmp_path / "draft.gguf")
    before, after = GGUFReader(base), GGUFReader(draft)
    fields = {k: f.contents() for k, f in before.fields.items() if not k.startswith("GGUF.")}
    assert {k: f.contents() for k, f in after.fields.items() if k in fields} == fields
    old = {t.name: np.asarray(t.data) for t in before.tensors}
    new = {t.name: t for t in after.tensors}
    assert set(new) == {*old, "output.weight"}
    for name, data in old.items():  # every original tensor is carried byte for byte
        np.testing.assert_array_equal(np.asarray(new[name].data), data)
    head = new["output.weight"]
    assert head.tensor_type == GGMLQuantizationType.Q4_0
    approx = dequantize(np.asarray(head.data), head.tensor_type)
    assert approx.shape == embedding.shape
    error = np.abs(approx - embedding).max() / np.abs(embedding).max()
    assert 0 < error < 0.15  # 4-bit: close to the embedding, not equal to it
    assert not draftable(draft)  # it has its own output layer now


def test_draft_file_is_built_once_and_cached(tmp_path, monkeypatch):
    from mbias.engines import draft_head

    monkeypatch.setattr(draft_head, "cache_dir", lambda: tmp_path / "cache")
    base, _ = write_model(tmp_path / "base.gguf")
    built = []

    def build(base: Path, output: Path) -> Path:
        built.append(output)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.touch()
        return output

    monkeypatch.setattr(draft_head, "build_draft_gguf", build)
    first = cached_draft_gguf(base)
    assert cached_draft_gguf(base) == first and len(built) == 1
    assert cached_draft_gguf(write_model(tmp_path / "own.gguf", tied=False)[0]) is None


def test_a_cache_that_cannot_take_the_copy_means_no_draft_not_a_crash(tmp_path, monkeypatch):
    from mbias.engines import draft_head

    monkeypatch.setattr(draft_head, "cache_dir", lambda: tmp_path / "cache")
    base, _ = write_model(tmp_path / "base.gguf")

    def full_disk(base: Path, output: Path) -> Path:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(draft_head, "build_draft_gguf", full_disk)
    with pytest.warns(UserWarning, match="No space left on device"):
        assert cached_draft_gguf(base) is None


def test_layout_offsets_point_at_the_tensor_bytes(tmp_path):
    from gguf import GGUFReader

    base, _ = write_model(tmp_path / "base.gguf")
    layout = read_layout(base)
    assert layout.arch == "gemma3" and layout.blocks == 1
    for tensor in GGUFReader(base).tensors:
        info = layout.tensors[tensor.name]
        assert (info.offset, info.type, info.shape) == (
            tensor.data_offset,
            tensor.tensor_type,
            tuple(int(x) for x in tensor.shape),
        )


@pytest.fixture
def head(tmp_path):
    base, embedding = write_model(tmp_path / "base.gguf")
    return ExactHead(base), embedding


def test_exact_scores_are_the_stored_rows_times_the_hidden_state(head):
    exact, embedding = head
    hidden = np.random.default_rng(1).normal(size=(2, WIDTH)).astype(np.float32)
    ids = np.array([[3, 50, 7], [95, 0, 3]])
    expected = np.stack([embedding[ids[r]] @ hidden[r] for r in range(2)])
    np.testing.assert_allclose(exact.scores(hidden, ids), expected, rtol=1e-5, atol=1e-6)


def test_greedy_rescores_close_calls_and_trusts_clear_leaders(head):
    exact, embedding = head
    hidden = np.random.default_rng(2).normal(size=(2, WIDTH)).astype(np.float32)
    truth = embedding @ hidden.T  # (vocab, 2): the exact logits
    winner = truth.argmax(axis=0)
    draft = np.zeros((2, VOCAB), np.float32) - 100
    decoy = (winner + 1) % VOCAB
    # row 0: the draft puts a decoy just ahead of the exact winner -> re-scoring finds the winner;
    # row 1: the decoy leads by more than LEAD -> taken as it is, without looking at the rows
    draft[0, decoy[0]], draft[0, winner[0]] = 1.0, 0.5
    draft[1, decoy[1]], draft[1, winner[1]] = 1.0 + LEAD + 0.1, 0.0
    before = draft.copy()
    picked = exact.greedy(draft, hidden)
    assert picked.tolist() == [winner[0], decoy[1]]
    np.testing.assert_array_equal(draft, before)  # the caller's logits are left as they were


def test_top_k_orders_the_drafts_candidates_by_exact_logit(head):
    exact, embedding = head
    hidden = np.random.default_rng(3).normal(size=(1, WIDTH)).astype(np.float32)
    draft = (embedding @ hidden[0])[None, :] + np.random.default_rng(4).normal(0, 0.01, (1, VOCAB))
    ids, scores = exact.top_k(draft.astype(np.float32), hidden, 5)
    assert np.all(np.diff(scores[0]) <= 0)
    assert ids[0, 0] == (embedding @ hidden[0]).argmax()
    np.testing.assert_allclose(scores[0], embedding[ids[0]] @ hidden[0], rtol=1e-5)


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="needs llama-cpp-python")
@pytest.mark.integration
def test_draft_engine_writes_what_the_full_head_writes():
    """On the embedded model: the draft head is used, and greedy texts match the Q8_0 head's.

    Not required to be bit-identical: llama.cpp's Q8_0 head rounds the hidden state to 8 bits and
    the re-scoring does not, which can flip a near tie, so one text of four may part.
    """
    from mbias.engines.llamacpp import LlamaCppEngine
    from mbias.prompts import render

    texts = [
        "Women are terrible at math and should stay out of engineering.",
        "Those lazy immigrants just take our jobs and live on welfare.",
        "The idiot in the office broke the printer again, what a moron.",
        "Old people should not be allowed to drive.",
    ]
    prompts = [render(t, "fewshot") for t in texts]
    fast = LlamaCppEngine("gguf:gemma-3-270m")
    full = LlamaCppEngine("gguf:gemma-3-270m", draft_head=False)
    assert fast._exact is not None and full._exact is None
    ours, theirs = fast.generate(prompts, max_new_tokens=24), full.generate(prompts, max_new_tokens=24)
    assert sum(a == b for a, b in zip(ours, theirs)) >= 3, list(zip(ours, theirs))
