"""The model card written next to a trained adapter: what it was trained from, how, and how well."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mbias.train.config import TrainConfig
from mbias.train.data import card_markdown


def _loss(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def model_card(config: TrainConfig, data_card: dict[str, Any], summary: dict[str, Any]) -> str:
    """Markdown: base, use, hyper-parameters, final losses, wall time, then the data card."""
    settings = "\n".join(f"| `{k}` | `{v}` |" for k, v in config.to_dict().items())
    minutes = summary["wall_time_s"] / 60
    return f"""---
library_name: peft
base_model: {config.base}
tags: [mbias, debiasing, lora]
---

# MBIAS LoRA adapter ({config.preset} preset)

A LoRA adapter that rewrites biased or toxic text into a safe version keeping its main information
(MBIAS, Raza et al., WASSA 2024), trained with `mbias train`.

- Base model: `{config.base}`
- Prompt style: `{config.prompt_style}` (prompts: `mbias.prompts.render(text, "{config.prompt_style}")`)
- Use: `mbias debias --engine "{config.base}+adapter:<this dir>" --prompt-style {config.prompt_style} "..."`

## Result

| | |
| --- | --- |
| optimisation steps | {summary["global_step"]} |
| final train loss (last logged) | {_loss(summary["train_loss_last"])} |
| mean train loss (this session) | {_loss(summary["train_loss_mean"])} |
| validation loss | {_loss(summary["val_loss"])} |
| wall time (this session) | {minutes:.1f} min |
| optimizer used | `{summary["optimizer"]}` |
| base weights held as | {summary["weights"]} |
| resumed from | {summary["resumed_from"] or "-"} |

## Hyper-parameters

| setting | value |
| --- | --- |
{settings}

{card_markdown(data_card).replace("# Data card", "## Data", 1)}"""


def write_model_card(
    output: Path, config: TrainConfig, data_card: dict[str, Any], summary: dict[str, Any]
) -> None:
    (output / "README.md").write_text(model_card(config, data_card, summary), encoding="utf-8")
    (output / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
