"""Speed of the embedded rewriter: load times, texts/s and generated tokens/s by batch size, memory.

Prints a table; ratios are against batch size 1 and against the MBIAS recipe's way of running
(a transformers text-generation pipeline, right padding, batch 8, same weights and prompts), both
measured in the same run. Example:
    python benchmarks/speed.py --engine mbias-270m --texts 32
    python benchmarks/speed.py --cold          # also time the first-ever load (GGUF conversion)
    python benchmarks/speed.py --baseline none # skip the recipe baseline
    python benchmarks/speed.py --screening     # also the product path (judge screen on / off)
    python benchmarks/speed.py --full-head     # also llama.cpp without the draft output head
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mbias.eval.dev import machine

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
LOAD_SNIPPET = """
import time, json, sys
t = time.perf_counter()
from mbias.engines import load_engine
from mbias.config import resolve
load_engine(resolve(sys.argv[1]).spec)
print(json.dumps({"seconds": time.perf_counter() - t}))
"""


def timed_load(engine: str, cache: str | None = None) -> float:
    """Load time in a fresh process (imports included), as a user experiences it."""
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error"}
    if cache:
        env["MBIAS_CACHE"] = cache
    out = subprocess.run(
        [sys.executable, "-c", LOAD_SNIPPET, engine], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["seconds"]


def thirty_word_texts(n: int) -> list[str]:
    """Held-out biased news sentences of 25-35 words (BABE), a realistic length for chat output."""
    import pandas as pd

    from mbias.splits import is_heldout

    frame = pd.read_csv(DATA / "babe" / "final_labels_SG2.csv", sep=";", encoding="utf-8-sig")
    texts = [t for t in frame.text if 25 <= len(t.split()) <= 35 and is_heldout(t)]
    return (texts * (n // max(1, len(texts)) + 1))[:n]


def transformers_twin(spec: str) -> str:
    """The same weights under transformers: what the MBIAS recipe would run."""
    from mbias.config import EMBEDDED_GGUF, gguf_spec

    if spec.startswith("hf:"):
        return spec
    base, _, lora = spec.removeprefix("llamacpp:").partition("+lora:")
    if base != EMBEDDED_GGUF or (lora and not Path(lora).is_dir()):
        raise SystemExit(f"no transformers twin for {spec}; pass --baseline hf:...")
    return gguf_spec("hf", base, lora or None)


def recipe_texts_per_second(spec: str, prompts: list[str], max_new_tokens: int) -> float:
    """The MBIAS recipe's inference: transformers pipeline, right padding, batch 8, greedy, no stop."""
    from transformers import pipeline

    from mbias.engines import load_engine

    hf = load_engine(spec)
    pipe = pipeline("text-generation", model=hf.model, tokenizer=hf.tokenizer)
    pipe.tokenizer.padding_side = "right"  # the pipeline switches to left on creation; the recipe did not
    options = {"batch_size": 8, "max_new_tokens": max_new_tokens, "return_full_text": False}
    pipe(prompts[:2], **{**options, "max_new_tokens": 4, "do_sample": False})  # warm-up
    start = time.perf_counter()
    pipe(prompts, **options, do_sample=False)
    return len(prompts) / (time.perf_counter() - start)


PRODUCT_PATHS = {  # name -> DebiasSettings fields; "default" is what `mbias debias` runs
    "screen off": {"screen": False},
    "default": {},
    "default + 4 retries": {"retries": 4},
}


def screening_rates(engine: object, prompt_style: str, texts: list[str]) -> dict[str, dict[str, float]]:
    """The whole ``mbias debias`` path (screen -> rewrite -> verify -> retry) on a mixed batch job,
    with the judge's screen and the retries switched off in turn: what each costs or buys. The
    judge is warmed up first."""
    from mbias.intervene import REASON_CLEAN, Debiaser, DebiasSettings
    from mbias.judges import load_judge

    judge = load_judge("embedded")
    judge.score(texts[:2])
    rates = {}
    for name, fields in PRODUCT_PATHS.items():
        debiaser = Debiaser(engine, judge=judge, prompt_style=prompt_style, settings=DebiasSettings(**fields))
        start = time.perf_counter()
        records = debiaser.debias(texts)
        rates[name] = {
            "texts_per_s": len(texts) / (time.perf_counter() - start),
            "skipped": sum(r.get("reason") == REASON_CLEAN for r in records) / len(texts),
            "retried": sum(bool(r.get("retried")) for r in records) / len(texts),
        }
    return rates


def batch_job(engine: Any, prompts: list[str], size: int, new_tokens: int) -> tuple[float, int, list[str]]:
    """Seconds, generated tokens and texts for ``prompts`` sent ``size`` at a time."""
    start, tokens, texts = time.perf_counter(), 0, []
    for i in range(0, len(prompts), size):
        for outputs in engine.generate(prompts[i : i + size], max_new_tokens=new_tokens):
            tokens += len(engine.tokenizer(outputs[0], add_special_tokens=False)["input_ids"])
            texts.append(outputs[0])
    return time.perf_counter() - start, tokens, texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--engine", default="mbias-270m")
    parser.add_argument("--texts", type=int, default=32, help="texts per batch-size measurement")
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--cold", action="store_true", help="also time a first load into an empty cache")
    parser.add_argument(
        "--baseline", default="auto", help="recipe baseline spec, 'auto' (same weights) or 'none'"
    )
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: all cores)")
    parser.add_argument("--screening", action="store_true", help="also time the product path, screen on/off")
    parser.add_argument(
        "--full-head", action="store_true", help="also time llama.cpp without the draft output head"
    )
    args = parser.parse_args()

    from mbias.config import resolve
    from mbias.engines import load_engine
    from mbias.intervene import DebiasSettings
    from mbias.prompts import render

    if args.cold:
        with tempfile.TemporaryDirectory() as empty_cache:
            print(f"cold load (empty cache, converts GGUF): {timed_load(args.engine, empty_cache):.1f} s")
    print(f"warm load (fresh process, imports included): {timed_load(args.engine):.1f} s")

    entry = resolve(args.engine)
    thread_option = {"threads": args.threads} if args.threads else {}
    engine = load_engine(entry.spec, **thread_option)
    texts = thirty_word_texts(args.texts)
    prompts = [render(t, entry.prompt_style, engine.tokenizer) for t in texts]
    engine.generate(prompts[:2], max_new_tokens=4)  # warm-up
    rows, outputs = [], []
    for size in [int(s) for s in args.batch_sizes.split(",")]:
        elapsed, tokens, outputs = batch_job(engine, prompts, size, args.max_new_tokens)
        rows.append((size, len(prompts) / elapsed, tokens / elapsed, elapsed / len(prompts)))
    base = rows[0][1]
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before any baseline loads
    screening = screening_rates(engine, entry.prompt_style, texts) if args.screening else None
    full_head = None
    if args.full_head and entry.spec.startswith("llamacpp:"):  # packaged output layer, same prompts
        full = load_engine(entry.spec, draft_head=False, **thread_option)
        full.generate(prompts[:2], max_new_tokens=4)
        elapsed, _, full_outputs = batch_job(full, prompts, rows[-1][0], args.max_new_tokens)
        full_head = (len(prompts) / elapsed, sum(a == b for a, b in zip(outputs, full_outputs)))
        del full
    recipe = None
    if args.baseline != "none":
        twin = transformers_twin(entry.spec) if args.baseline == "auto" else args.baseline
        recipe = recipe_texts_per_second(twin, prompts, args.max_new_tokens)
    threads = f", {engine.threads} threads" if hasattr(engine, "threads") else ""
    print(f"\nengine {engine.name}{threads}, {len(texts)} texts of ~30 words, max {args.max_new_tokens} new")
    print(f"load average (1, 5, 15 min) at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print("machine: " + "; ".join(f"{key} {value}" for key, value in machine().items()))
    print(f"{'batch':>5} {'texts/s':>8} {'tokens/s':>9} {'s/text':>7} {'vs batch 1':>10} {'vs recipe':>9}")
    for size, tps, toks, per in rows:
        versus = f"{tps / recipe:>8.2f}x" if recipe else f"{'-':>9}"
        print(f"{size:>5} {tps:>8.2f} {toks:>9.1f} {per:>7.2f} {tps / base:>9.2f}x {versus}")
    if recipe:
        print(f"\nMBIAS recipe ({twin}: transformers pipeline, right padding, batch 8): {recipe:.2f} texts/s")
    print(f"peak resident memory of the engine: {peak_mib:.0f} MiB")
    if full_head:
        rate, same = full_head
        print(
            f"\nwithout the draft head (packaged Q8_0 output layer), batch {rows[-1][0]}: "
            f"{rate:.2f} texts/s; "
            f"draft head {rows[-1][1] / rate:.2f}x, identical texts {same}/{len(prompts)}"
        )
    if screening:
        print(f"\nproduct path (Debiaser + embedded judge, batch {DebiasSettings().batch_size}):")
        for name, got in screening.items():
            print(
                f"{name:>24}: {got['texts_per_s']:.2f} texts/s, {got['skipped']:.0%} skipped as clean, "
                f"{got['retried']:.0%} retried"
            )


if __name__ == "__main__":
    main()
