"""Speed of the embedded rewriter: load times, texts/s and generated tokens/s by batch size, memory.

Prints a table; ratios are against batch size 1 measured in the same run. Example:
    python benchmarks/speed.py --engine mbias-270m --texts 32
    python benchmarks/speed.py --cold          # also time the first-ever load (GGUF conversion)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--engine", default="mbias-270m")
    parser.add_argument("--texts", type=int, default=32, help="texts per batch-size measurement")
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--cold", action="store_true", help="also time a first load into an empty cache")
    args = parser.parse_args()

    from mbias.config import resolve
    from mbias.engines import load_engine
    from mbias.prompts import render

    if args.cold:
        with tempfile.TemporaryDirectory() as empty_cache:
            print(f"cold load (empty cache, converts GGUF): {timed_load(args.engine, empty_cache):.1f} s")
    print(f"warm load (fresh process, imports included): {timed_load(args.engine):.1f} s")

    entry = resolve(args.engine)
    engine = load_engine(entry.spec)
    texts = thirty_word_texts(args.texts)
    prompts = [render(t, entry.prompt_style, engine.tokenizer) for t in texts]
    engine.generate(prompts[:2], max_new_tokens=4)  # warm-up
    rows = []
    for size in [int(s) for s in args.batch_sizes.split(",")]:
        start, tokens = time.perf_counter(), 0
        for i in range(0, len(prompts), size):
            for outputs in engine.generate(prompts[i : i + size], max_new_tokens=args.max_new_tokens):
                tokens += len(engine.tokenizer(outputs[0], add_special_tokens=False)["input_ids"])
        elapsed = time.perf_counter() - start
        rows.append((size, len(prompts) / elapsed, tokens / elapsed, elapsed / len(prompts)))
    base = rows[0][1]
    print(f"\nengine {engine.name}, {len(texts)} texts of ~30 words, max {args.max_new_tokens} new tokens")
    print(f"{'batch':>5} {'texts/s':>8} {'tokens/s':>9} {'s/text':>7} {'vs batch 1':>10}")
    for size, tps, toks, per in rows:
        print(f"{size:>5} {tps:>8.2f} {toks:>9.1f} {per:>7.2f} {tps / base:>9.2f}x")
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak resident memory: {peak_mib:.0f} MiB")


if __name__ == "__main__":
    main()
