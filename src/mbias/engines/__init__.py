"""Engines turn prompts into text. One protocol, several backends, chosen by a spec string.

Specs:
- ``hf:<hub id or local dir>[+adapter:<dir>]``: transformers causal LM, optional PEFT adapter;
  ``hf:gguf:gemma-3-270m`` is the embedded base model from its PyPI package.
- ``openai:<base url>#<model>``: any OpenAI-compatible server (vLLM, Ollama, llama.cpp, OpenAI).
- ``vllm:<hub id or local dir>[+adapter:<dir>]``: in-process vLLM (GPU, optional extra).
- ``llamacpp:<gguf file>[+lora:<gguf file or PEFT dir>]``: llama.cpp on CPU (optional extra);
  ``llamacpp:gguf:gemma-3-270m`` is the embedded base model.
Short names (``mbias-270m``, ``mbias-7b``) expand through :mod:`mbias.config`.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from mbias.errors import MbiasError


@runtime_checkable
class Engine(Protocol):
    """What every backend offers; the Debiaser, judges and annotator depend on nothing else."""

    name: str
    tokenizer: Any | None  # for chat templates and token counts; None for HTTP engines
    context_window: int | None

    def generate(
        self, prompts: list[str], *, max_new_tokens: int = 128, temperature: float = 0.0, n: int = 1
    ) -> list[list[str]]:
        """For each prompt, ``n`` completions (the continuation only, not the prompt)."""
        ...


def split_adapter(source: str) -> tuple[str, str | None]:
    base, sep, adapter = source.partition("+adapter:")
    return base, (adapter if sep else None)


ENGINE_SCHEMES = ("hf", "llamacpp", "openai", "vllm")


def check_spec(spec: str) -> tuple[str, str]:
    """(scheme, rest) of a spec, or MbiasError with a one-line reason: a spec's form can be checked
    before its engine is loaded (a second engine that loads only when first needed)."""
    scheme, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise MbiasError(
            f"unknown engine spec {spec!r}; expected hf:..., llamacpp:..., openai:URL#MODEL, vllm:... "
            "or a short name"
        )
    if scheme not in ENGINE_SCHEMES:
        raise MbiasError(
            f"unknown engine scheme {scheme!r} in {spec!r}; use hf:, llamacpp:, openai: or vllm:"
        )
    return scheme, rest


def load_engine(spec: str, **options: Any) -> Engine:
    """Build the engine a spec names; raises MbiasError with a one-line reason when it cannot."""
    scheme, rest = check_spec(spec)
    if scheme == "hf":
        from mbias.engines.hf import HFEngine

        base, adapter = split_adapter(rest)
        return HFEngine(base, adapter=adapter, **options)
    if scheme == "openai":
        from mbias.engines.openai import OpenAIEngine

        return OpenAIEngine.from_spec(rest, **options)
    if scheme == "vllm":
        from mbias.engines.vllm import VLLMEngine

        base, adapter = split_adapter(rest)
        return VLLMEngine(base, adapter=adapter, **options)
    if scheme == "llamacpp":
        from mbias.engines.llamacpp import LlamaCppEngine

        base, _, lora = rest.partition("+lora:")
        return LlamaCppEngine(base, lora=lora or None, **options)
    raise AssertionError(f"scheme {scheme!r} passed check_spec but has no engine")
