"""The TrainingArguments every trainer of a run shares (SFT and DPO), built from a TrainConfig."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mbias.train.config import TrainConfig


def optimizer_name(config: TrainConfig) -> str:
    """The preset's optimiser, or plain AdamW where 8-bit paged AdamW cannot run (no CUDA/bitsandbytes)."""
    import importlib.util

    import torch

    if "8bit" in config.optim and not (
        torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes")
    ):
        return "adamw_torch"
    return config.optim


def checkpointing_argument() -> str:
    """The installed TrainingArguments' name for activation checkpointing.

    transformers 5.2x renamed ``gradient_checkpointing`` to ``activation_checkpointing`` (the old name
    warns until v6); earlier 5.x releases, such as the 5.17 on the project's GPU machine, know only
    the old one.
    """
    from dataclasses import fields

    from transformers import TrainingArguments

    names = {f.name for f in fields(TrainingArguments)}
    return "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"


def training_arguments(config: TrainConfig, output: Path, has_eval: bool) -> dict[str, Any]:
    """The TrainingArguments both trainers share."""
    import torch

    cuda = torch.cuda.is_available()
    return dict(
        output_dir=str(output),
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.eval_batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_ratio,  # transformers 5: a float below 1 is a ratio of total steps
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        max_grad_norm=config.max_grad_norm,
        weight_decay=config.weight_decay,
        optim=optimizer_name(config),
        max_length=config.max_length,
        **{checkpointing_argument(): config.gradient_checkpointing},
        bf16=cuda,
        fp16=False,
        use_cpu=not cuda,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=config.eval_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        logging_steps=config.logging_steps,
        logging_first_step=True,
        report_to="none",
        seed=config.seed,
        data_seed=config.seed,
        dataloader_num_workers=0,
        dataset_num_proc=None,
    )
