"""Where a debias job's time goes, stage by stage, and how close the rewriter runs to the machine.

Two workloads, each in a fresh process that does what ``mbias debias -i FILE -o OUT`` does (import,
build the Debiaser, read, then segment, screen, rewrite, verify and write batch by batch):
  short   held-out bias-set and ToxiGen statements, half of them hateful (``--texts``, default 64)
  long    the long-answer benchmark's markdown answers with biased sentences spliced in
For each it prints seconds and share per stage (mbias.profile: exclusive time, so the stages add up
to the time inside them), whole-process and in-loop rates, prompt and new tokens per second, and
the fraction of the machine's ceiling: a 270M-parameter model needs about 2 x 270M FLOPs per token,
and a float32 matmul measured in the same run says how many FLOPs per second the cores give.

    python benchmarks/throughput.py --out runs/throughput.json
    python benchmarks/throughput.py --workloads short --texts 64 --engine mbias-270m --judge embedded
    python benchmarks/throughput.py --escalate mbias-1.5b            # the flagged ones to a second engine
    python benchmarks/throughput.py --engine mbias-1.5b --candidates 5   # best of five per flagged unit
    python benchmarks/throughput.py --workloads short --latency 16   # and one text at a time, warm
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

JOB = r"""
import json, sys, time
started = time.perf_counter()
from mbias.intervene import Debiaser, DebiasSettings
from mbias.records import RecordWriter, read_records
from mbias import config, profile
imported = time.perf_counter()
source, target, engine, judge, batch_size, escalate, candidates = sys.argv[1:8]
debiaser = Debiaser(engine, judge=config.default_judge(judge),
                    settings=DebiasSettings(batch_size=int(batch_size), escalate=escalate or None,
                                            candidates=int(candidates)))
built = time.perf_counter()
with profile.stage("read"):
    records = read_records(source, "text")
with RecordWriter(target) as writer:
    for batch in debiaser.stream(records):
        with profile.stage("write"):
            for record in batch:
                writer.write(record)
finished = time.perf_counter()
actions = {}
for record in read_records(target, "text"):
    actions[record["action"]] = actions.get(record["action"], 0) + 1
import resource
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"peak_rss_mib": peak, "imports": imported - started, "build": built - imported,
                  "loop": finished - built,
                  "stages": profile.snapshot(), "tallies": profile.tallies(), "texts": len(records),
                  "actions": actions}))
"""


def short_texts(count: int) -> list[dict]:
    """Half hateful (bias-set rewrites and ToxiGen hate), half clean (kept rows and ToxiGen neutral)."""
    from mbias.eval.dev import dev_splits

    splits = dev_splits(count)
    biased = [t for name in ("bias-rewrite", "toxigen-hate") for t in splits[name][1][: count // 4]]
    clean = [t for name in ("bias-keep", "toxigen-clean") for t in splits[name][1][: count // 4]]
    mixed = [t for pair in zip(biased, clean) for t in pair]
    return [{"id": str(i), "text": t} for i, t in enumerate(mixed)]


def long_texts(count: int) -> list[dict]:
    from mbias.eval.answers import build

    return [{"id": a.id, "text": a.markdown} for a in build()[:count]]


def matmul_gflops(seconds: float = 3.0) -> float:
    """float32 GEMM rate on every core torch uses: the compute ceiling for the model's matmuls."""
    import torch

    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    torch.mm(a, b)
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.mm(a, b)
        runs += 1
    return runs * 2 * 1024**3 / (time.perf_counter() - start) / 1e9


def run_job(
    records: list[dict], engine: str, judge: str, batch_size: int, escalate: str = "", candidates: int = 1
) -> dict:
    with tempfile.TemporaryDirectory() as work:
        source, target = Path(work, "in.jsonl"), Path(work, "out.jsonl")
        source.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", JOB, str(source), str(target), engine, judge, str(batch_size), escalate]
            + [str(candidates)],
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"the job failed:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process"] = wall
    return result


def batch_equality(records: list[dict], engine: str, count: int) -> tuple[list[tuple[str, str]], int]:
    """((batched, alone) for each row whose greedy rewrite differs, rows compared): the engine on
    ``count`` prompts as one batch against the same prompts one at a time."""
    from mbias.config import resolve
    from mbias.engines import load_engine
    from mbias.prompts import render

    entry = resolve(engine)
    model = load_engine(entry.spec)
    prompts = [render(r["text"], entry.prompt_style, model.tokenizer) for r in records[:count]]
    batched = model.generate(prompts, max_new_tokens=48)
    alone = [model.generate([p], max_new_tokens=48)[0] for p in prompts]
    return [(a[0], b[0]) for a, b in zip(batched, alone) if a != b], len(prompts)


def latency(
    records: list[dict], engine: str, judge: str, escalate: str, count: int, candidates: int = 1
) -> list[float]:
    """Seconds per text, one text per call, in a warm process (every model loaded by a first call
    on a hateful text): what a caller of ``Debiaser.debias([text])`` or of the HTTP API waits."""
    from mbias import config
    from mbias.intervene import Debiaser, DebiasSettings

    debiaser = Debiaser(
        engine,
        judge=config.default_judge(judge),
        settings=DebiasSettings(escalate=escalate or None, candidates=candidates),
    )
    debiaser.debias([records[0]["text"]])
    if escalate:
        debiaser.escalation_engine()  # loaded before timing, as `serve` does at start
    seconds = []
    for record in records[1 : count + 1]:
        start = time.perf_counter()
        debiaser.debias([record["text"]])
        seconds.append(time.perf_counter() - start)
    return seconds


def report(name: str, result: dict, gflops: float, params: float) -> None:
    loop, texts = result["loop"], result["texts"]
    stages = sorted(result["stages"].items(), key=lambda item: -item[1][0])
    print(f"\n## {name}: {texts} texts, actions {result['actions']}")
    print(
        f"whole process {result['process']:.1f} s = {texts / result['process']:.2f} texts/s; "
        f"in the loop {loop:.1f} s = {texts / loop:.2f} texts/s"
    )
    print(f"peak RSS {result['peak_rss_mib']:.0f} MiB")
    print(f"{'stage':<12}{'seconds':>9}{'share':>8}{'calls':>7}")
    startup = result["process"] - result["build"] - loop  # the interpreter and the imports
    inside = sum(seconds for seconds, _ in result["stages"].values())
    rows = [("imports", startup, None), *((n, s, c) for n, (s, c) in stages)]
    rows.append(("other", result["process"] - startup - inside, None))
    for stage, seconds, calls in rows:
        print(f"{stage:<12}{seconds:>9.2f}{seconds / result['process']:>8.1%}{calls or '':>7}")
    tallies = result["tallies"]
    new, decode = tallies.get("new tokens", 0), result["stages"].get("decode", (0, 0))[0]
    evaluated, prefill = tallies.get("prompt tokens evaluated", 0), result["stages"].get("prefill", (0, 0))[0]
    ceiling = gflops * 1e9 / (2 * params)
    if decode:
        print(
            f"decode: {new} new tokens in {decode:.2f} s = {new / decode:.0f} tokens/s "
            f"({new / decode / ceiling:.1%} of the {ceiling:.0f} tokens/s compute ceiling)"
        )
    if prefill:
        print(
            f"prefill: {evaluated} of {tallies.get('prompt tokens', 0)} prompt tokens evaluated "
            f"(the rest shared) in {prefill:.2f} s = {evaluated / prefill:.0f} tokens/s"
        )
    result.update(ceiling_tokens_per_s=ceiling)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", default="short,long")
    parser.add_argument("--texts", type=int, default=64, help="short statements")
    parser.add_argument("--answers", type=int, default=32, help="long answers")
    parser.add_argument("--engine", default="mbias-270m")
    parser.add_argument("--judge", default="embedded")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--escalate", default="", help="a second engine for what the first leaves flagged")
    parser.add_argument("--candidates", type=int, default=1, help="rewrites per flagged unit (best one kept)")
    parser.add_argument("--params", type=float, default=268e6, help="the rewriter's parameter count")
    parser.add_argument("--equal", type=int, default=16, help="prompts checked batched vs one at a time")
    parser.add_argument("--latency", type=int, default=0, help="short texts timed one at a time, warm")
    parser.add_argument("--out")
    args = parser.parse_args()
    gflops = matmul_gflops()
    print(f"float32 matmul: {gflops:.0f} GFLOP/s; engine {args.engine}, judge {args.judge}")
    makers = {"short": lambda: short_texts(args.texts), "long": lambda: long_texts(args.answers)}
    results = {}
    for name in args.workloads.split(","):
        results[name] = run_job(
            makers[name](), args.engine, args.judge, args.batch_size, args.escalate, args.candidates
        )
        report(name, results[name], gflops, args.params)
    if args.latency:
        waits = sorted(
            latency(
                short_texts(args.texts), args.engine, args.judge, args.escalate, args.latency, args.candidates
            )
        )
        median, worst = waits[len(waits) // 2], waits[int(0.9 * (len(waits) - 1))]
        print(f"\none text at a time, warm: median {median:.2f} s, p90 {worst:.2f} s ({len(waits)} texts)")
        results["latency"] = {"median_s": median, "p90_s": worst, "seconds": waits}
    if args.equal:
        differ, compared = batch_equality(short_texts(args.texts), args.engine, args.equal)
        print(
            f"\ngreedy rewrites that differ between one batch and one at a time: {len(differ)} of {compared}"
        )
        print(
            "(llama.cpp's kernels sum in another order for a batch than for one row; where two tokens\n"
            " nearly tie the greedy choice can flip, and the rewrites then go separate ways)"
        )
        for batched, alone in differ:
            print(f"  batched: {batched!r}\n  alone:   {alone!r}")
        results["batch_equality"] = {"differ": len(differ), "compared": compared, "pairs": differ}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"gflops": gflops, **vars(args), "results": results}, indent=1))


if __name__ == "__main__":
    main()
