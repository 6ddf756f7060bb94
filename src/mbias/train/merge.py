"""Merge a LoRA adapter into its base weights: a normal model directory that needs no PEFT to load."""

from __future__ import annotations

import json
from pathlib import Path

from mbias.errors import MbiasError
from mbias.records import check_writable
from mbias.train.sft import base_source


def merge_adapter(base: str, adapter: str | Path, output: str | Path) -> Path:
    """Load base + adapter in fp32, merge, save weights and tokenizer to ``output``."""
    from peft import PeftModel

    from mbias.engines.hf import load_model_and_tokenizer

    adapter, output = Path(adapter), Path(output)
    config = adapter / "adapter_config.json"
    if not config.is_file():
        raise MbiasError(f"{adapter}: not a PEFT adapter directory (no adapter_config.json)")
    try:
        json.loads(config.read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:  # checked before the base model takes its time to load
        raise MbiasError(f"{config}: not readable JSON ({exc})") from None
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise MbiasError(f"{output}: already exists and is not an empty folder; choose another --output")
    check_writable(output.parent)
    model, tokenizer = load_model_and_tokenizer(base_source(base))
    try:
        merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    except (ValueError, KeyError, RuntimeError, OSError) as exc:  # another base's shapes, missing weights
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MbiasError(f"{adapter}: does not load onto {base}: {first}") from None
    output.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(output))
    tokenizer.save_pretrained(str(output))
    return output
