"""transformers backend: any causal LM, an optional PEFT adapter, batched left-padded generation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mbias.engines.packaged import converted_model_dir, is_packaged
from mbias.errors import MbiasError
from mbias.prompts import STOP_STRINGS


def resolve_model_path(source: str) -> str:
    """A packaged model (``gguf:...``) as its converted transformers directory; anything else as is."""
    return str(converted_model_dir(source)) if is_packaged(source) else source


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
