"""Preference tuning (DPO) with TRL: prefer the reviewed rewrite to what the model wrote instead.

Supervised training shows the model good rewrites; it never shows it its own failures. The
shipped model's commonest failure is to hand a biased text back unchanged, and greedy decoding
makes the copy its single most likely answer. DPO pushes the reviewed rewrite (chosen) above the
model's own copy (rejected) relative to a frozen reference. Continuing an adapter, TRL keeps a
frozen copy of it as that reference. The NLL of the chosen rewrite is added with weight
``dpo_sft_weight`` (as in RPO) so the chosen text stays likely while the gap widens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mbias.prompts import training_text
from mbias.train.arguments import training_arguments
from mbias.train.config import TrainConfig
from mbias.train.data import REJECTED, Pair, pair_context


def to_preference_examples(pairs: list[Pair], style: str) -> list[dict[str, str]]:
    """TRL prompt / chosen / rejected rows, rendered like the SFT examples."""
    rows = []
    for p in pairs:
        prompt, chosen = training_text(p["biased_text"], p["debiased_text"], style, pair_context(p))
        _, rejected = training_text(p["biased_text"], p[REJECTED], style, pair_context(p))
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return rows


def dpo_config(config: TrainConfig, output: Path, has_eval: bool) -> Any:
    from trl import DPOConfig

    losses = ["sigmoid"] + (["sft"] if config.dpo_sft_weight > 0 else [])
    return DPOConfig(
        **training_arguments(config, output, has_eval),
        beta=config.dpo_beta,
        loss_type=losses,
        loss_weights=[1.0, config.dpo_sft_weight][: len(losses)],
    )
