"""Does the llama.cpp engine keep the transformers engine's rewrites? Same adapter, held-out toxic texts.

transformers runs the GGUF dequantised to fp32 with the PEFT adapter merged; llama.cpp runs the
Q4_K_M file with the adapter as a GGUF LoRA, with its draft output head (the default) and without
("full head"). Prints how many greedy rewrites are identical and,
for each engine, the share the embedded judge still finds unsafe, mean similarity and empties.
Example:
    python benchmarks/engine_parity.py --adapter runs/mbias-270m --texts 48
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def heldout_toxic(n: int) -> list[str]:
    """Toxic ParaDetox sentences held out from training (mbias.splits)."""
    import pandas as pd

    from mbias.splits import is_heldout

    frame = pd.read_csv(DATA / "paradetox" / "paradetox_train.tsv", sep="\t")
    return [t for t in frame.toxic if isinstance(t, str) and is_heldout(t)][:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--adapter", required=True, help="PEFT adapter directory trained on gemma-3-270m")
    parser.add_argument("--texts", type=int, default=48)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--show", type=int, default=6, help="print this many differing rewrites")
    args = parser.parse_args()

    from mbias.engines import load_engine
    from mbias.judges import load_judge
    from mbias.prompts import clean_output, render

    texts = heldout_toxic(args.texts)
    prompts = [render(t, "mbias") for t in texts]
    rewrites = {}
    llamacpp = f"llamacpp:gguf:gemma-3-270m+lora:{args.adapter}"
    for name, spec, options in (
        ("llamacpp", llamacpp, {}),
        ("full head", llamacpp, {"draft_head": False}),  # the packaged Q8_0 output layer throughout
        ("hf", f"hf:gguf:gemma-3-270m+adapter:{args.adapter}", {}),
    ):
        engine = load_engine(spec, **options)
        start = time.perf_counter()
        outputs = engine.generate(prompts, max_new_tokens=args.max_new_tokens)
        print(f"{name} ({spec}): {len(texts) / (time.perf_counter() - start):.2f} texts/s")
        rewrites[name] = [clean_output(o[0], t) for o, t in zip(outputs, texts)]
        del engine

    judge = load_judge("embedded")
    print(f"\n{len(texts)} held-out toxic texts, rewrites identical to transformers':")
    for name in ("llamacpp", "full head"):
        print(f"  {name}: {sum(a == b for a, b in zip(rewrites[name], rewrites['hf']))}/{len(texts)}")
    print(f"inputs judged unsafe: {sum(map(judge.is_unsafe, judge.score(texts))) / len(texts):.3f}")
    for name, outs in rewrites.items():
        unsafe = sum(map(judge.is_unsafe, judge.score(outs))) / len(texts)
        similarity = sum(judge.similarity(texts, outs)) / len(texts)
        empty = sum(not o.strip() for o in outs)
        print(f"{name:>10}: unsafe {unsafe:.3f}, mean similarity {similarity:.3f}, empty {empty}")
    differing = [(t, a, b) for t, a, b in zip(texts, rewrites["llamacpp"], rewrites["hf"]) if a != b]
    for text, ours, theirs in differing[: args.show]:
        print(f"\ninput       : {text}\nllamacpp    : {ours}\ntransformers: {theirs}")


if __name__ == "__main__":
    main()
