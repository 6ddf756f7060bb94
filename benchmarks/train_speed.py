"""How fast a training preset runs here: seconds per step, tokens per second, peak memory, and
what a whole run of the preset over the given data would take.

Speed and memory depend on a model's shapes, not its values, so ``--arch`` builds a named
architecture with random weights and a byte-level BPE tokenizer trained on the data: that is how
the paper's Mistral-7B recipe is timed where the hub (and so its weights) is out of reach. The
BPE tokenizer, fitted to this very text, splits it into fewer tokens than the model's own would,
so tokens/s is the figure that carries over; ``--base`` times real weights and their tokenizer.

    python benchmarks/train_speed.py --arch mistral-7b --preset paper --steps 20 --data data/bias/*.jsonl
    python benchmarks/train_speed.py --base hf:gguf:gemma-3-270m --preset cpu-small --steps 6 --data ...
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# The public configs' shapes (Mistral-7B-Instruct-v0.2; gemma-3-270m as its GGUF unpacks).
ARCHITECTURES: dict[str, tuple[str, dict[str, Any]]] = {
    "mistral-7b": (
        "MistralConfig",
        dict(
            vocab_size=32000,
            hidden_size=4096,
            intermediate_size=14336,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=128,
            max_position_embeddings=32768,
            sliding_window=None,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
        ),
    ),
    "gemma-3-270m": (
        "Gemma3TextConfig",
        dict(
            vocab_size=262144,
            hidden_size=640,
            intermediate_size=2048,
            num_hidden_layers=18,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=256,
            max_position_embeddings=32768,
            sliding_window=512,
            query_pre_attn_scalar=256,
            tie_word_embeddings=True,
            layer_types=(["sliding_attention"] * 5 + ["full_attention"]) * 3,
        ),
    ),
}


def bpe_tokenizer(texts: list[str], vocab_size: int) -> Any:
    """A byte-level BPE fitted to ``texts``, with the special tokens the trainers need."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<eos>", "<bos>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", unk_token="<unk>"
    )


def random_model_dir(arch: str, texts: list[str], directory: Path) -> Path:
    """Save ``arch`` with random bf16 weights (built on the GPU when there is one) and a BPE tokenizer."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    class_name, shape = ARCHITECTURES[arch]
    tokenizer = bpe_tokenizer(texts, shape["vocab_size"])
    config = getattr(transformers, class_name)(
        **shape,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
            model = AutoModelForCausalLM.from_config(config)
    finally:
        torch.set_default_dtype(torch.float32)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return directory


def step_timer() -> Any:
    """A callback keeping each optimisation step's wall time (synchronised with the GPU)."""
    import torch
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.seconds: list[float] = []
            self._start = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self._start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.seconds.append(time.perf_counter() - self._start)

    return StepTimer()


def parameter_count(model: Any) -> int:
    """Parameters as the architecture has them (bitsandbytes stores a 4-bit weight two to a byte)."""
    total = 0
    for parameter in model.parameters():
        state = getattr(parameter, "quant_state", None)
        total += math.prod(state.shape) if state is not None else parameter.numel()
    return total


def machine_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    from mbias.eval.dev import machine

    found = machine()
    return f"{found['cpu']}, {found['cores']} cores"


def peak_memory_gib() -> tuple[str, float]:
    import torch

    if torch.cuda.is_available():
        return "GPU", torch.cuda.max_memory_allocated() / 2**30
    return "RSS", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from mbias.prompts import training_text
    from mbias.train.config import apply_overrides, preset
    from mbias.train.data import load_training_data
    from mbias.train.sft import build_trainer, weight_format

    settings = ["val_fraction=0", "logging_steps=1", "save_steps=1000000", "exclude_test_set=", *args.set]
    config = apply_overrides(preset(args.preset), settings)
    data = load_training_data(args.data, config)
    work = Path(tempfile.mkdtemp(prefix="mbias-train-speed-"))
    started = time.perf_counter()
    if args.arch:
        style = config.prompt_style
        texts = [" ".join(training_text(p["biased_text"], p["debiased_text"], style)) for p in data.train]
        base = f"hf:{random_model_dir(args.arch, texts, work / 'model')}"
    else:
        base = args.base
    built_s = time.perf_counter() - started
    print(f"model ready in {built_s:.1f} s; loading it for training", file=sys.stderr, flush=True)
    run = apply_overrides(config, [f"base={base}", f"max_steps={args.steps}"])
    started = time.perf_counter()
    trainer = build_trainer(run, data, work / "run")
    load_s = time.perf_counter() - started
    print(f"trainer ready in {load_s:.1f} s", file=sys.stderr, flush=True)
    timer = step_timer()
    trainer.add_callback(timer)
    trainer.train()
    steady = timer.seconds[args.warmup :] or timer.seconds
    step_s = statistics.median(steady)
    tokens = [len(ids) for ids in trainer.train_dataset["input_ids"]]
    mean_tokens = statistics.fmean(tokens)
    steps_per_epoch = math.ceil(len(data.train) / (config.batch_size * config.grad_accum))
    full_steps = config.max_steps if config.max_steps > 0 else math.ceil(steps_per_epoch * config.epochs)
    memory_kind, memory = peak_memory_gib()
    model = trainer.model
    return {
        "machine": machine_name(),
        "torch": torch.__version__,
        "preset": args.preset,
        "model": args.arch + " (random weights, BPE fitted to the data)" if args.arch else args.base,
        "parameters_b": round(parameter_count(model) / 1e9, 3),
        "trainable_m": round(sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6, 1),
        "weights": weight_format(model),
        "optimizer": str(getattr(trainer.args.optim, "value", trainer.args.optim)),
        "batch_size": config.batch_size,
        "gradient_checkpointing": config.gradient_checkpointing,
        "build_s": round(built_s, 1),
        "load_s": round(load_s, 1),
        "steps_timed": len(steady),
        "step_s_median": round(step_s, 3),
        "step_s_max": round(max(steady), 3),
        "mean_tokens_per_example": round(mean_tokens, 1),
        "tokens_per_s": round(mean_tokens * config.batch_size * config.grad_accum / step_s, 1),
        f"peak_{memory_kind}_gib": round(memory, 2),
        "train_pairs": len(data.train),
        "preset_steps_on_this_data": full_steps,
        "preset_minutes_on_this_data": round(full_steps * step_s / 60, 1),
        "final_loss": next((h["loss"] for h in reversed(trainer.state.log_history) if "loss" in h), None),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--arch", choices=sorted(ARCHITECTURES), help="random weights of this architecture")
    model.add_argument("--base", help="real weights: a model spec, as `mbias train --base` takes")
    parser.add_argument("--preset", default="cpu-small")
    parser.add_argument("--data", nargs="+", required=True)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out of the timing")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    figures = measure(args)
    width = max(map(len, figures))
    for key, value in figures.items():
        print(f"{key:<{width}}  {value}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
