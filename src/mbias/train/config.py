"""Training settings: one dataclass, the paper's preset and a preset that fits two CPU cores.

``paper`` carries MBIAS's published hyper-parameters unchanged so a GPU run reproduces the paper;
``cpu-small`` is what makes gemma-3-270m learn within about an hour on a laptop-class CPU, and
``cpu-1.5b`` trains the 1.5B quality tier there in resumable pieces.
``--set key=value`` overrides any field, parsed to the field's type.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, fields
from typing import Any

from mbias.errors import MbiasError

# The paper's test inputs, in the data folder (mbias.config.data_dir()); "default" finds them there.
MBIAS_TEST_SET = "default"


@dataclass
class TrainConfig:
    """Every knob of one fine-tuning run; written next to the adapter so a run can be repeated."""

    preset: str = "cpu-small"
    base: str = "hf:gguf:gemma-3-270m"
    prompt_style: str = "mbias"
    # "sft" learns the reviewed rewrites; "dpo" prefers them to the model's own failures (pairs
    # with a rejected_text, as `mbias mine` writes them), usually continuing ``init_adapter``
    method: str = "sft"
    init_adapter: str = ""  # a LoRA adapter dir to continue instead of starting a new one
    dpo_beta: float = 0.1
    dpo_sft_weight: float = 1.0  # NLL of the chosen rewrite beside the DPO loss: keeps it likely
    # LoRA / QLoRA
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: str = "all-linear"  # or a comma-separated list of module names
    quantize_4bit: bool = False  # QLoRA (nf4, double quantisation, bf16 compute); only used with CUDA
    # optimisation
    learning_rate: float = 3e-4
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.03
    epochs: float = 1.0
    max_steps: int = 600  # -1: run `epochs` epochs
    batch_size: int = 8
    grad_accum: int = 1
    eval_batch_size: int = 16
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    optim: str = "adamw_torch"
    gradient_checkpointing: bool = False
    completion_only_loss: bool = True
    max_length: int = 256
    seed: int = 42
    # bookkeeping
    logging_steps: int = 10
    eval_steps: int = 100
    save_steps: int = 100
    save_total_limit: int = 2
    # data
    references: str = "first"  # ParaDetox: "all" = one pair per reference, "first" = the first reference only
    max_chars: int = 600  # drop pairs whose source + target are longer (characters)
    min_chars: int = 3
    val_fraction: float = 0.05
    val_max: int = 160
    exclude_test_set: str = MBIAS_TEST_SET  # sources found here are dropped ("" turns the check off)

    def test_set_path(self) -> str:
        """The file whose sources never train: ``exclude_test_set``, with "default" resolved."""
        if self.exclude_test_set != MBIAS_TEST_SET:
            return self.exclude_test_set
        from mbias.config import data_dir

        return str(data_dir() / "mbias-test" / "train-500-biased-evaluation.csv")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PRESETS: dict[str, dict[str, Any]] = {
    # Raza et al. 2024, MBIAS: QLoRA on Mistral-7B-Instruct-v0.2.
    "paper": dict(
        preset="paper",
        base="hf:mistralai/Mistral-7B-Instruct-v0.2",
        prompt_style="mistral-inst",
        lora_r=64,
        lora_alpha=16,
        lora_dropout=0.2,
        quantize_4bit=True,
        learning_rate=2e-5,
        lr_scheduler="constant",
        warmup_ratio=0.05,
        epochs=2.0,
        max_steps=-1,
        batch_size=8,
        grad_accum=1,
        eval_batch_size=8,
        max_grad_norm=0.3,
        optim="paged_adamw_8bit",
        gradient_checkpointing=True,
        max_length=2048,
        references="all",
        max_chars=8000,
        val_fraction=0.05,
        val_max=500,
        eval_steps=500,
        save_steps=500,
    ),
    # gemma-3-270m on 2 CPU cores: ~4.7 s per step at batch 8 for ~40-token pairs, 600 steps ~ 50 min.
    "cpu-small": dict(preset="cpu-small"),
    # Qwen2.5-Coder-1.5B-Instruct (the 1.5b extra) on 2 CPU cores: about 6x a 270M step, so a short
    # run that checkpoints every few minutes and resumes across sessions. The short instruction
    # halves the tokens of a step (55 s -> about 30 s at batch 8); r 8 keeps the shipped adapter
    # near 18 MB in fp16.
    "cpu-1.5b": dict(
        preset="cpu-1.5b",
        base="hf:gguf:qwen2.5-coder-1.5b",
        prompt_style="short",
        lora_r=8,
        lora_alpha=16,
        learning_rate=2e-4,
        max_steps=300,
        logging_steps=5,
        eval_steps=50,
        save_steps=10,
        val_max=64,
    ),
}


def preset(name: str) -> TrainConfig:
    if name not in PRESETS:
        raise MbiasError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return TrainConfig(**PRESETS[name])


def _parse(value: str, kind: Any, key: str) -> Any:
    """A --set value as the field's type (bool, int, float or str)."""
    try:
        if kind is bool:
            lowered = value.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind is int:
            number = float(value)  # accepts 600 and 6e2
            if not number.is_integer():
                raise ValueError
            return int(number)
        if kind is float:
            return float(value)
    except ValueError:
        raise MbiasError(f"--set {key}={value}: expected {kind.__name__}") from None
    return value


METHODS = ("sft", "dpo")


def apply_overrides(config: TrainConfig, assignments: list[str]) -> TrainConfig:
    """Apply ``key=value`` overrides, typed by the dataclass; unknown keys are a user error."""
    hints = typing.get_type_hints(TrainConfig)
    known = {f.name for f in fields(TrainConfig)}
    changes: dict[str, Any] = {}
    for item in assignments:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise MbiasError(f"--set {item!r}: expected key=value")
        if key not in known:
            raise MbiasError(f"--set {key}: unknown setting; known: {', '.join(sorted(known))}")
        changes[key] = _parse(value.strip(), hints[key], key)
    method = changes.get("method", config.method)
    if method not in METHODS:
        raise MbiasError(f"--set method={method}: choose one of {', '.join(METHODS)}")
    return dataclasses.replace(config, **changes)
