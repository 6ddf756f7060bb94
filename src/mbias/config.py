"""Settings (MBIAS_* environment variables) and the registry of short model names.

A short name is only a convenience: it expands to an engine spec string, plus the prompt style the
model was trained with. Keeping the two together is the fix for the paper's empty outputs, whose
training prompt differed from its inference prompt.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

ASSETS = Path(__file__).parent / "assets"
DEFAULT_ADAPTER = ASSETS / "mbias-270m-adapter"
EMBEDDED_GGUF = "gguf:gemma-3-270m"
# The quality tier: Qwen2.5-Coder-1.5B-Instruct from the ``1.5b`` extra (mbias.engines.packaged).
QUALITY_ADAPTER = ASSETS / "mbias-1.5b-adapter"
QUALITY_GGUF = "gguf:qwen2.5-coder-1.5b"


def cache_dir() -> Path:
    """Where converted weights and other derived files live (MBIAS_CACHE, else the XDG cache)."""
    root = os.environ.get("MBIAS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "mbias"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_engine_spec() -> str:
    return os.environ.get("MBIAS_ENGINE", "mbias-270m")


def gguf_spec(engine: str, gguf: str = EMBEDDED_GGUF, adapter: str | Path | None = None) -> str:
    """The spec that runs one GGUF model (+ a PEFT adapter) on ``engine``: transformers ("hf") takes
    the adapter as ``+adapter:``, llama.cpp ("llamacpp") as ``+lora:``, converted once and cached."""
    join = {"hf": "+adapter:", "llamacpp": "+lora:"}.get(engine)
    if join is None:
        raise ValueError(f"no GGUF spec for engine {engine!r} (hf, llamacpp)")
    return f"{engine}:{gguf}" + (f"{join}{adapter}" if adapter else "")


@dataclass(frozen=True)
class ModelEntry:
    """What a short model name stands for."""

    spec: str
    prompt_style: str
    description: str
    # Whether the model was trained with neighbouring sentences in its prompt (prompts.render's
    # ``context``); only then does the Debiaser show them, so inference prompts match training.
    context: bool = False


def adapter_prompt(adapter: str | Path) -> tuple[str, bool] | None:
    """(prompt style, context) an adapter was trained with, from its train_config.json; None
    when the directory has none. An adapter is used with the prompt it learned, wherever it is."""
    path = Path(adapter) / "train_config.json"
    if not path.is_file():
        return None
    recorded = json.loads(path.read_text(encoding="utf-8"))
    return str(recorded.get("prompt_style") or "mbias"), bool(recorded.get("context", False))


def _adapter_entry(gguf: str, adapter: Path, model: str, fallback_style: str) -> ModelEntry:
    """A packaged base with the project's adapter for it, on llama.cpp when it is installed (about 3x
    transformers on CPU; the adapter is converted to a GGUF LoRA once and cached), transformers
    otherwise; the base alone with ``fallback_style`` while no adapter ships."""
    engine = "llamacpp" if importlib.util.find_spec("llama_cpp") is not None else "hf"
    if (adapter / "adapter_config.json").exists():
        style, context = adapter_prompt(adapter) or ("mbias", False)
        return ModelEntry(
            spec=gguf_spec(engine, gguf=gguf, adapter=adapter),
            prompt_style=style,
            description=f"{model} with the project's MBIAS LoRA adapter",
            context=context,
        )
    return ModelEntry(
        spec=gguf_spec(engine, gguf=gguf),
        prompt_style=fallback_style,
        description=f"{model} base model, {fallback_style} prompt (no adapter shipped yet)",
    )


def registry() -> dict[str, ModelEntry]:
    """Short names users can pass to --engine."""
    return {
        "mbias-270m": _adapter_entry(EMBEDDED_GGUF, DEFAULT_ADAPTER, "gemma-3-270m", "fewshot"),
        "mbias-1.5b": _adapter_entry(QUALITY_GGUF, QUALITY_ADAPTER, "Qwen2.5-Coder-1.5B-Instruct", "chat"),
        "gemma-3-270m": ModelEntry(
            spec=gguf_spec("hf"),
            prompt_style="fewshot",
            description="gemma-3-270m base model, few-shot prompt (the baseline)",
        ),
        "qwen2.5-coder-1.5b": ModelEntry(
            spec=gguf_spec("llamacpp", gguf=QUALITY_GGUF),
            prompt_style="chat",
            description="Qwen2.5-Coder-1.5B-Instruct base model, chat prompt (the 1.5B baseline; extra 1.5b)",
        ),
        "mbias-7b": ModelEntry(
            spec="hf:newsmediabias/MBIAS",
            prompt_style="mistral-inst",
            description="the paper's MBIAS model (Mistral-7B-Instruct-v0.2 fine-tune; needs hub access)",
        ),
        "mistral-7b-instruct": ModelEntry(
            spec="hf:mistralai/Mistral-7B-Instruct-v0.2",
            prompt_style="mistral-inst",
            description="the paper's base model, vanilla (hub access needed)",
        ),
    }


def resolve(name_or_spec: str) -> ModelEntry:
    """Expand a short name. A full spec with an adapter takes the prompt its adapter was trained
    with; any other passes through with the "auto" style (chat template when the model has one,
    the plain MBIAS format otherwise)."""
    entries = registry()
    if name_or_spec in entries:
        return entries[name_or_spec]
    for join in ("+adapter:", "+lora:"):
        if join in name_or_spec and (trained := adapter_prompt(name_or_spec.split(join, 1)[1])):
            style, context = trained
            return ModelEntry(name_or_spec, style, "user-supplied engine with a trained adapter", context)
    return ModelEntry(spec=name_or_spec, prompt_style="auto", description="user-supplied engine spec")


JUDGE_ASSETS = ASSETS / "judges"


def default_judge(choice: str = "") -> str | None:
    """The judge spec to use, or None for no judge.

    An explicit choice wins (a CLI --judge), then MBIAS_JUDGE, then the embedded judge once its
    heads ship; 'none' anywhere turns screening off.
    """
    chosen = choice or os.environ.get("MBIAS_JUDGE")
    if chosen:
        return None if chosen == "none" else chosen
    return "embedded" if (JUDGE_ASSETS / "heads.json").exists() else None


def measuring_judge(choice: str = "") -> str:
    """The judge that scores for ``eval`` and ``probe``: the choice, else MBIAS_JUDGE, else the
    embedded one. MBIAS_JUDGE=none turns screening off in the rewrite path; measuring still needs
    a judge, so there it means the embedded one."""
    chosen = choice or os.environ.get("MBIAS_JUDGE") or "embedded"
    return "embedded" if chosen == "none" else chosen


PACKAGED_DATA = Path(__file__).parent / "data"


def data_dir() -> Path:
    """The datasets folder: MBIAS_DATA, else ``shared/data`` beside a repository checkout (the
    development data), else the copies shipped in the package (what probe and eval --paper need)."""
    if os.environ.get("MBIAS_DATA"):
        return Path(os.environ["MBIAS_DATA"])
    shared = Path(__file__).resolve().parents[3] / "shared" / "data"
    return shared if shared.is_dir() else PACKAGED_DATA
