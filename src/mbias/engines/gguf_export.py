"""A PEFT LoRA adapter as a GGUF LoRA file, the form llama.cpp (and Ollama's ADAPTER) load beside a base.

The base GGUF stays untouched and quantised; the adapter travels as a small f16 file (about 8 MB for
r 16 on every linear layer of gemma-3-270m). What llama.cpp computes per adapted weight is
``W x + scale * B (A x)`` with ``scale = alpha / rank`` when the file carries ``adapter.lora.alpha``
and ``scale = 1`` when it does not. PEFT's own scaling (``lora_alpha / r``, ``/ sqrt(r)`` with
rsLoRA, per-module ``rank_pattern`` / ``alpha_pattern``) is therefore folded into each ``B`` and no
alpha is written: one rule that reproduces every PEFT variant exactly.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any

from mbias.config import cache_dir
from mbias.engines.gguf_layout import read_layout, write_atomically
from mbias.errors import MbiasError

# Architectures whose HF -> GGUF conversion keeps the projection weights as they are (llama-family
# conversions permute q/k rows, which an adapter would have to follow); checked end to end in tests
# on the real models (gemma-3-270m, and Qwen2.5-Coder-1.5B where the 1.5b extra is installed).
SUPPORTED_ARCHS = ("gemma3", "qwen2")
_LORA_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<part>[AB])\.weight$")
_UNSUPPORTED = {
    "use_dora": "DoRA",
    "modules_to_save": "modules_to_save (fully trained layers)",
    "trainable_token_indices": "trainable tokens",
    "target_parameters": "LoRA on raw parameters",
    "lora_bias": "LoRA bias terms",
    "layer_replication": "layer replication",
    "alora_invocation_tokens": "activated LoRA (aLoRA)",
    "fan_in_fan_out": "transposed (fan_in_fan_out) weights",
}


def _adapter_config(adapter: Path) -> dict[str, Any]:
    config_file, weights = adapter / "adapter_config.json", adapter / "adapter_model.safetensors"
    if not config_file.exists() or not weights.exists():
        raise MbiasError(
            f"{adapter}: not a PEFT adapter directory "
            "(needs adapter_config.json and adapter_model.safetensors)"
        )
    config = json.loads(config_file.read_text())
    if config.get("peft_type", "LORA") != "LORA":
        raise MbiasError(f"{adapter}: a {config['peft_type']} adapter; only LoRA converts to GGUF")
    for key, what in _UNSUPPORTED.items():
        if config.get(key):
            raise MbiasError(f"{adapter}: uses {what}, which llama.cpp LoRA files cannot carry")
    return config


def _scaling(config: dict[str, Any], module: str, rank: int) -> float:
    """PEFT's scaling for one module: alpha (or its pattern override) over r (sqrt(r) with rsLoRA)."""
    alpha = config.get("lora_alpha", 8)
    patterns = config.get("alpha_pattern") or {}
    if patterns:  # importing peft costs seconds: only when there is a pattern to match
        from peft.utils.other import get_pattern_key

        alpha = patterns.get(get_pattern_key(patterns.keys(), module), alpha)
    return alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)


def lora_to_gguf(adapter: str | Path, base_gguf: str | Path, output: str | Path) -> Path:
    """Write ``adapter`` (a PEFT LoRA directory) as a GGUF LoRA file for ``base_gguf``; returns ``output``.

    Every adapted weight is checked against the base so a mismatched base fails here, with the
    name of the first bad tensor, rather than later inside llama.cpp.
    """
    import gguf
    import numpy as np
    from safetensors import safe_open

    adapter, output = Path(adapter), Path(output)
    config = _adapter_config(adapter)
    layout = read_layout(Path(base_gguf))
    arch, shapes = layout.arch, {name: info.shape for name, info in layout.tensors.items()}
    if arch not in SUPPORTED_ARCHS:
        raise MbiasError(
            f"LoRA to GGUF supports {', '.join(SUPPORTED_ARCHS)} bases, not {arch!r}: merge the adapter "
            "(mbias merge) and convert the merged model with llama.cpp's convert_hf_to_gguf.py"
        )
    names = gguf.get_tensor_name_map(
        next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch), layout.blocks
    )
    pairs: dict[str, dict[str, Any]] = {}
    with safe_open(adapter / "adapter_model.safetensors", framework="pt") as weights:
        for key in weights.keys():  # noqa: SIM118 (safe_open is not a mapping)
            match = _LORA_KEY.match(key)
            if not match:
                raise MbiasError(f"{adapter}: tensor {key!r} is not a LoRA A/B weight; cannot convert")
            module = match["module"].replace("model.language_model.", "model.")
            tensor = weights.get_tensor(key).float().numpy()
            pairs.setdefault(module, {})[match["part"]] = tensor
    if not pairs:
        raise MbiasError(f"{adapter}: the adapter holds no LoRA weights")

    writer = gguf.GGUFWriter(None, arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_name(f"{adapter.name} (LoRA)")
    for module, parts in sorted(pairs.items()):
        target = names.get_name(module)
        if target is None or f"{target}.weight" not in shapes or set(parts) != {"A", "B"}:
            raise MbiasError(f"{adapter}: no weight in {base_gguf} for LoRA module {module!r}")
        a, b = parts["A"], parts["B"]  # (r, in) and (out, r), as llama.cpp stores lora_a / lora_b
        if shapes[f"{target}.weight"][:2] != (a.shape[1], b.shape[0]):
            raise MbiasError(
                f"{adapter}: {module} is {b.shape[0]}x{a.shape[1]} but {target}.weight in {base_gguf} is "
                f"{shapes[f'{target}.weight'][1]}x{shapes[f'{target}.weight'][0]}: wrong base model?"
            )
        writer.add_tensor(f"{target}.weight.lora_a", a.astype(np.float16))
        writer.add_tensor(
            f"{target}.weight.lora_b", (b * _scaling(config, module, a.shape[0])).astype(np.float16)
        )

    return write_atomically(writer, output)


def cached_lora_gguf(adapter: str | Path, base_gguf: str | Path) -> Path:
    """The GGUF of a PEFT adapter, converted once and cached under a digest of adapter and base."""
    adapter = Path(adapter)
    _adapter_config(adapter)  # a directory that cannot convert fails before any hashing
    digest = hashlib.sha256()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        digest.update((adapter / name).read_bytes())
    base = Path(base_gguf)
    digest.update(f"{base.name}:{base.stat().st_size}".encode())
    target = cache_dir() / "gguf" / f"lora-{digest.hexdigest()[:16]}.gguf"
    return target if target.exists() else lora_to_gguf(adapter, base, target)
