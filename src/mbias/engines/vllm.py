"""In-process vLLM backend for GPU batch work (optional extra: pip install 'mbias[vllm]')."""

from __future__ import annotations

from typing import Any

from mbias.errors import MbiasError
from mbias.prompts import STOP_STRINGS


class VLLMEngine:
    """vLLM's continuous batching over all prompts at once; LoRA adapters through LoRARequest."""

    def __init__(self, source: str, adapter: str | None = None, **options: Any):
        try:
            from vllm import LLM
        except ImportError:
            raise MbiasError("the vllm engine needs vLLM and a GPU: pip install 'mbias[vllm]'") from None
        self.name = f"vllm:{source}" + (f"+adapter:{adapter}" if adapter else "")
        self.llm = LLM(model=source, enable_lora=adapter is not None, **options)
        self.tokenizer = self.llm.get_tokenizer()
        self.context_window = self.llm.llm_engine.model_config.max_model_len
        self.lora = None
        if adapter:
            from vllm.lora.request import LoRARequest

            self.lora = LoRARequest("mbias", 1, adapter)

    def generate(
        self, prompts: list[str], *, max_new_tokens: int = 128, temperature: float = 0.0, n: int = 1
    ) -> list[list[str]]:
        from vllm import SamplingParams

        params = SamplingParams(
            n=n,
            temperature=temperature if (temperature > 0 or n == 1) else 0.7,
            max_tokens=max_new_tokens,
            stop=list(STOP_STRINGS),
        )
        outputs = self.llm.generate(prompts, params, lora_request=self.lora)
        return [[choice.text for choice in out.outputs] for out in outputs]
