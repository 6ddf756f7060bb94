"""Merge a LoRA adapter into its base weights: a normal model directory that needs no PEFT to load."""

from __future__ import annotations

from pathlib import Path

from mbias.errors import MbiasError
from mbias.train.sft import base_source


def merge_adapter(base: str, adapter: str | Path, output: str | Path) -> Path:
    """Load base + adapter in fp32, merge, save weights and tokenizer to ``output``."""
    from peft import PeftModel

    from mbias.engines.hf import load_model_and_tokenizer

    adapter, output = Path(adapter), Path(output)
    if not (adapter / "adapter_config.json").exists():
        raise MbiasError(f"{adapter}: not a PEFT adapter directory (no adapter_config.json)")
    if output.exists() and any(output.iterdir()):
        raise MbiasError(f"{output}: already exists and is not empty; choose another --output")
    model, tokenizer = load_model_and_tokenizer(base_source(base))
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    output.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(output))
    tokenizer.save_pretrained(str(output))
    return output
