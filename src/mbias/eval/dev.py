"""The development splits every benchmark measures on, and the machine a figure came from.

The splits are the rows ``mbias.splits.is_heldout`` keeps out of every training run (adapters and
judge heads), from the datasets folder (``mbias.config.data_dir()``: MBIAS_DATA or ../shared/data)
and the repository's bias set. They are a development tool: they need a checkout and the data.
"""

from __future__ import annotations

import os
import platform
import random
from pathlib import Path
from typing import Any

from mbias.errors import MbiasError

REPO = Path(__file__).resolve().parents[3]


def repo_path(*parts: str) -> Path:
    """A folder of the repository checkout (the bias set, the benchmark answers)."""
    path = REPO.joinpath(*parts)
    if not path.exists():
        raise MbiasError(f"{path} is missing: the dev splits and benchmarks run from a repository checkout")
    return path


def machine() -> dict[str, Any]:
    """What the figures were measured on. One adapter's greedy text moves with the CPU's kernels
    (the shipped adapter rewrote 20 of 50 bias-set texts differently on an AVX-512 machine than on
    the one before; docs/lab/results-log.md, "Preference round 3"): compare figures from one machine only."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), cpu)
    except OSError:
        pass
    found: dict[str, Any] = {"cpu": cpu or "unknown", "cores": os.cpu_count()}
    try:
        from llama_cpp import llama_cpp

        found["llama_cpp"] = llama_cpp.llama_print_system_info().decode().strip(" |")
    except ImportError:
        pass
    return found


def dev_splits(limit: int, seed: int = 0) -> dict[str, tuple[str, list[str], list[str] | None]]:
    """name -> (kind, texts, people-written rewrites or None); kind "biased" or "clean"; at most
    ``limit`` seeded picks per split. The rewrites (ParaDetox's first neutral paraphrase, the bias
    set's reviewed target) are scored like a system: what the judges make of a rewrite people
    accepted, a floor no model output is likely to beat."""
    from mbias.config import data_dir
    from mbias.records import read_records
    from mbias.splits import is_heldout

    data = data_dir()
    if not (data / "paradetox").is_dir():
        raise MbiasError(f"the dev splits need ParaDetox in {data} (MBIAS_DATA, or ../shared/data)")

    paradetox = read_records(data / "paradetox" / "paradetox_train.tsv", "toxic")
    bias = [
        r for f in sorted(repo_path("data", "bias").glob("*.jsonl")) for r in read_records(f, "biased_text")
    ]
    toxigen = read_records(data / "toxigen-prompts" / "toxigen_statements.csv", "text")
    pools: dict[str, tuple[str, list[tuple[str, str | None]]]] = {
        "paradetox": ("biased", [(r["toxic"], r.get("neutral1") or None) for r in paradetox]),
        "bias-rewrite": (
            "biased",
            [(r["biased_text"], r["debiased_text"]) for r in bias if r.get("action") == "rewrite"],
        ),
        "bias-keep": ("clean", [(r["biased_text"], None) for r in bias if r.get("action") == "keep"]),
        "toxigen-hate": ("biased", [(r["text"], None) for r in toxigen if r["label"] == "hate"]),
        "toxigen-clean": ("clean", [(r["text"], None) for r in toxigen if r["label"] == "neutral"]),
    }
    splits = {}
    for name, (kind, pairs) in pools.items():
        references = {t.strip(): ref for t, ref in pairs if t and t.strip() and is_heldout(t)}
        held = sorted(references)
        random.Random(seed).shuffle(held)
        texts = held[:limit]
        refs = [references[t] for t in texts]
        splits[name] = (kind, texts, refs if all(refs) else None)
    return splits
