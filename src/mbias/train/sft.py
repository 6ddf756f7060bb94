"""LoRA / QLoRA fine-tuning with TRL, resumable, writing an adapter and a model card.

Pairs become TRL prompt-completion examples rendered by :func:`mbias.prompts.training_text`, so the
model is trained on exactly the prompt it sees at inference. TRL appends EOS to each completion (the
model learns to stop) and, with ``completion_only_loss``, labels the prompt tokens -100.
``method="dpo"`` swaps SFTTrainer for DPOTrainer (:mod:`mbias.train.dpo`); loading, arguments,
logging, checkpoints and cards are shared.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from mbias.errors import MbiasError
from mbias.prompts import training_text
from mbias.train.arguments import training_arguments
from mbias.train.config import TrainConfig
from mbias.train.data import Pair, TrainingData, pair_context, write_card

LOG_FILE = "train_log.jsonl"


def base_source(spec: str) -> str:
    """``hf:<id or dir>`` or a bare id/dir -> what load_model_and_tokenizer takes."""
    if "+adapter:" in spec:
        raise MbiasError(f"--base {spec!r}: train on a base model; merge the adapter first (mbias merge)")
    return spec[3:] if spec.startswith("hf:") else spec


def to_examples(pairs: list[Pair], style: str) -> list[dict[str, str]]:
    """TRL prompt-completion rows for a list of pairs."""
    rows = []
    for p in pairs:
        prompt, completion = training_text(p["biased_text"], p["debiased_text"], style, pair_context(p))
        rows.append({"prompt": prompt, "completion": completion})
    return rows


# What a run writes before its first step: a run that stopped with only these (the base model
# failed to load, say) has nothing to lose, and the next run may start over in the same folder.
SET_UP_FILES = frozenset({"data_card.json", "data_card.md", "train_config.json"})


def last_checkpoint(output: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(output)) if output.is_dir() else None


def _quantization(config: TrainConfig) -> Any | None:
    """QLoRA's 4-bit nf4 with double quantisation and bf16 compute, only where CUDA runs it."""
    import torch

    if not (config.quantize_4bit and torch.cuda.is_available()):
        return None
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError:
        raise MbiasError(
            "4-bit QLoRA needs bitsandbytes: pip install 'mbias[cuda]' (or --set quantize_4bit=false)"
        ) from None
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


def load_base(config: TrainConfig) -> tuple[Any, Any]:
    """Base model and tokenizer for training (right padding), 4-bit quantised where QLoRA applies."""
    import torch

    from mbias.engines.hf import load_model_and_tokenizer

    quantization = _quantization(config)
    cuda = torch.cuda.is_available()
    options: dict[str, Any] = {"attn_implementation": "eager"}  # recommended for training Gemma-3
    if quantization is not None:
        options.update(quantization_config=quantization, device_map={"": 0})
    model, tokenizer = load_model_and_tokenizer(
        base_source(config.base), dtype=torch.bfloat16 if cuda else torch.float32, **options
    )
    tokenizer.padding_side = "right"  # generation pads left; training pads right (TRL's collator does too)
    model.config.use_cache = False
    return model, tokenizer


def load_model(config: TrainConfig) -> tuple[Any, Any]:
    """The base model, wrapped in ``init_adapter`` (trainable) when the run continues one."""
    model, tokenizer = load_base(config)
    if config.init_adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, config.init_adapter, is_trainable=True)
    return model, tokenizer


def sft_config(config: TrainConfig, output: Path, has_eval: bool) -> Any:
    from trl import SFTConfig

    return SFTConfig(
        **training_arguments(config, output, has_eval),
        packing=False,
        completion_only_loss=config.completion_only_loss,
    )


def lora_config(config: TrainConfig) -> Any:
    from peft import LoraConfig

    targets = config.target_modules
    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets
        if targets == "all-linear"
        else [t.strip() for t in targets.split(",") if t.strip()],
        bias="none",
        task_type="CAUSAL_LM",
    )


def score_labelled_positions_only() -> None:
    """Make TRL's fused LM head skip prompt positions on CPU too, as it does on CUDA.

    Off-GPU, TRL projects every position through the LM head (fixed tile shapes for Neuron's compiler).
    With loss on the completion only, about 3/4 of those positions carry no label, and gemma-3's
    262k-token vocabulary makes the head the costliest layer: skipping them about halves a CPU step.
    The loss is unchanged (tests compare it with the model's own loss). A no-op if TRL changes.
    """
    from trl.trainer import utils

    original = getattr(utils, "_use_triton", None)
    if original is None or getattr(original, "mbias_patched", False):
        return

    def compact(device: Any) -> bool:
        return device.type == "cpu" or original(device)

    compact.mbias_patched = True  # type: ignore[attr-defined]
    utils._use_triton = compact


def jsonl_log(output: Path) -> Any:
    """A callback writing every logged metric as one JSON line in the output dir (survives a crash,
    read by the card)."""
    from transformers import TrainerCallback

    class JsonlLog(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            with (output / LOG_FILE).open("a", encoding="utf-8") as handle:
                handle.write(json.dumps({"step": state.global_step, **(logs or {})}) + "\n")

    return JsonlLog()


def build_trainer(config: TrainConfig, data: TrainingData, output: Path) -> Any:
    """The run's trainer: SFT (or DPO with ``method="dpo"``) over the pairs, LoRA on the base model
    (or the continued ``init_adapter``), logging to JSONL."""
    from datasets import Dataset

    score_labelled_positions_only()
    model, tokenizer = load_model(config)
    if config.method == "dpo":
        from trl import DPOTrainer as Trainer

        from mbias.train.dpo import dpo_config as arguments
        from mbias.train.dpo import to_preference_examples as examples
    else:
        from trl import SFTTrainer as Trainer

        arguments, examples = sft_config, to_examples
    train = Dataset.from_list(examples(data.train, config.prompt_style))
    val = Dataset.from_list(examples(data.val, config.prompt_style)) if data.val else None
    return Trainer(
        model=model,
        args=arguments(config, output, has_eval=val is not None),
        train_dataset=train,
        eval_dataset=val,
        processing_class=tokenizer,
        peft_config=None if config.init_adapter else lora_config(config),
        callbacks=[jsonl_log(output)],
    )


def weight_format(model: Any) -> str:
    """How the frozen base weights were held: the card says whether a run was QLoRA, as asked, or fell
    back to full precision (no CUDA or no bitsandbytes)."""
    if any(type(module).__name__ == "Linear4bit" for module in model.modules()):
        return "4-bit nf4 (QLoRA)"
    return str(next(model.parameters()).dtype).removeprefix("torch.")


def learned_context(config: TrainConfig, pairs: list[Pair]) -> bool:
    """Whether the adapter has learned prompts with neighbouring sentences, so the Debiaser shows
    them: this run's pairs carry them, or the adapter it continues had learned them. A DPO round
    on lone sentences does not unlearn what its SFT stage taught (the shipped mbias-1.5b's SFT
    trained on 2,041 pairs with context; its DPO run on lone ones had recorded "context": false,
    so the product path never showed the model an answer's neighbouring sentences)."""
    from mbias.config import adapter_prompt

    continued = adapter_prompt(config.init_adapter) if config.init_adapter else None
    return any(pair_context(p) for p in pairs) or bool(continued and continued[1])


def train(
    config: TrainConfig,
    data_specs: list[str],
    output: str | Path,
    mapping: dict[str, str] | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Run one fine-tuning job end to end; returns the summary written into the model card."""
    from mbias.train.card import write_model_card
    from mbias.train.data import load_training_data

    output = Path(output)
    if output.exists() and not output.is_dir():
        raise MbiasError(f"{output}: is a file; --output takes a run directory")
    if config.init_adapter and not (Path(config.init_adapter) / "adapter_config.json").exists():
        raise MbiasError(f"init_adapter={config.init_adapter}: no adapter_config.json there")
    checkpoint = last_checkpoint(output)
    if resume and checkpoint is None:
        raise MbiasError(f"{output}: no checkpoint to resume from; drop --resume to start a run there")
    if not resume and output.exists() and any(p.name not in SET_UP_FILES for p in output.iterdir()):
        raise MbiasError(
            f"{output}: already holds a run; pass --resume to continue it or choose another --output"
        )
    data = load_training_data(data_specs, config, mapping)
    output.mkdir(parents=True, exist_ok=True)
    write_card(data.card, output)
    recorded = {**config.to_dict(), "context": learned_context(config, data.train)}
    (output / "train_config.json").write_text(json.dumps(recorded, indent=2) + "\n", encoding="utf-8")
    started = time.perf_counter()
    trainer = build_trainer(config, data, output)
    result = trainer.train(resume_from_checkpoint=checkpoint if resume else None)
    final_eval = trainer.evaluate() if data.val else {}
    trainer.model.save_pretrained(str(output), selected_adapters=["default"])  # not DPO's frozen "ref"
    summary = {
        "base": config.base,
        "method": config.method,
        "init_adapter": config.init_adapter or None,
        "global_step": trainer.state.global_step,
        "resumed_from": checkpoint if resume else None,
        "train_loss_mean": result.training_loss,
        "train_loss_last": next(
            (h["loss"] for h in reversed(trainer.state.log_history) if "loss" in h), None
        ),
        "val_loss": final_eval.get("eval_loss"),
        "wall_time_s": round(time.perf_counter() - started, 1),
        "weights": weight_format(trainer.model),
        "optimizer": trainer.args.optim.value
        if hasattr(trainer.args.optim, "value")
        else str(trainer.args.optim),
    }
    write_model_card(output, config, data.card, summary)
    return summary
