"""``mbias debias --ray`` with 1 worker and with 2, on one corpus, in one run: texts/s and the ratio.

The corpus is short held-out texts (half hateful: bias-set rewrites and ToxiGen hate; half clean:
kept rows and ToxiGen neutral; ``mbias.eval.dev.dev_splits``), cut into ``--shards`` JSONL
shards. Every configuration (``--runs``, WORKERSxCPUS each) runs the same shards on the same local
Ray instance into a fresh output directory, with the real engine and judge (default: the embedded
``mbias-270m`` on llama.cpp and the embedded judge). A llama.cpp worker gets as many threads as it
holds CPUs. The rate is the job's wall time, actor start and model load included, since that is
what a user waits for; each worker's time inside ``process_batch`` and its peak RSS are printed too.
The default runs compare 2 one-CPU workers with 1 one-CPU worker (the ratio the issue asks for)
and with 1 worker holding both CPUs (the local path's setting on this machine).

    python benchmarks/ray_scale.py --texts 64 --shards 4
    python benchmarks/ray_scale.py --texts 128 --shards 8 --runs 1x1,2x1 --out runs/ray_scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path


def corpus(count: int, shards: int, directory: Path) -> int:
    """``count`` texts (fewer if the splits hold fewer), dealt round-robin into ``shards`` files."""
    from mbias.eval.dev import dev_splits

    splits = dev_splits(count)
    biased = [t for name in ("bias-rewrite", "toxigen-hate") for t in splits[name][1][: count // 4]]
    clean = [t for name in ("bias-keep", "toxigen-clean") for t in splits[name][1][: count // 4]]
    texts = [t for pair in zip(biased, clean) for t in pair]
    directory.mkdir(parents=True, exist_ok=True)
    for s in range(shards):
        with (directory / f"part-{s:02d}.jsonl").open("w", encoding="utf-8") as out:
            for i in range(s, len(texts), shards):
                out.write(json.dumps({"id": str(i), "text": texts[i]}, ensure_ascii=False) + "\n")
    return len(texts)


def parse_runs(spec: str) -> list[tuple[int, float]]:
    runs = []
    for item in spec.split(","):
        workers, _, cpus = item.partition("x")
        runs.append((int(workers), float(cpus or 1)))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--texts", type=int, default=64)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8, help="rows per chunk (the unit workers take)")
    parser.add_argument("--engine", default="mbias-270m")
    parser.add_argument("--judge", default="embedded")
    parser.add_argument("--runs", default="1x1,2x1,1x2", help="WORKERSxCPUS, comma-separated, in order")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args()

    import ray

    from mbias import config
    from mbias.intervene import DebiasSettings
    from mbias.scale.ray_job import RayJob, run_ray_job

    runs = parse_runs(args.runs)
    work = Path(tempfile.mkdtemp(prefix="ray-scale-"))
    try:
        texts = corpus(args.texts, args.shards, work / "in")
        cpus = max(2, max(int(w * c) for w, c in runs))
        ray.init(
            address="local",
            num_cpus=cpus,
            object_store_memory=300 * 1024**2,
            include_dashboard=False,
            log_to_driver=False,
        )
        print(
            f"corpus: {texts} texts in {args.shards} JSONL shards; engine {args.engine}, judge {args.judge}, "
            f"batch {args.batch_size}; local Ray with {cpus} CPUs on a {os.cpu_count()}-core machine"
        )
        results = []
        for index, (workers, cpus_each) in enumerate(runs):
            load = os.getloadavg()[0]
            job = RayJob(
                input=str(work / "in"),
                output=str(work / f"out-{index}"),
                engine=args.engine,
                judge=config.default_judge(args.judge),
                settings=DebiasSettings(batch_size=args.batch_size),
                workers=workers,
                cpus_per_worker=cpus_each,
            )
            started = time.perf_counter()
            report = run_ray_job(job)
            wall = time.perf_counter() - started
            result = {
                "workers": workers,
                "cpus_per_worker": cpus_each,
                "texts": report.rows,
                "seconds": round(wall, 2),
                "texts_per_s": round(report.rows / wall, 3),
                "load_before": round(load, 2),
                "per_worker": [
                    {
                        "worker": name,
                        "rows": stats.rows,
                        "busy_s": round(stats.seconds, 2),
                        "peak_rss_mib": round(stats.peak_rss_mib),
                    }
                    for name, stats in sorted(report.workers.items())
                ],
            }
            results.append(result)
        ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print()
    print("| workers x CPUs | texts | seconds | texts/s | per worker: rows, busy s, peak RSS | load before |")
    print("| --- | ---: | ---: | ---: | --- | ---: |")
    for r in results:
        workers = "; ".join(
            f"{w['rows']} rows, {w['busy_s']} s, {w['peak_rss_mib']} MiB" for w in r["per_worker"]
        )
        print(
            f"| {r['workers']} x {r['cpus_per_worker']:g} | {r['texts']} | {r['seconds']} | "
            f"{r['texts_per_s']} | {workers} | {r['load_before']} |"
        )
    base = next((r for r in results if (r["workers"], r["cpus_per_worker"]) == (1, 1.0)), None)
    for r in results:
        if base is not None and r is not base:
            ratio = r["texts_per_s"] / base["texts_per_s"]
            print(f"{r['workers']} x {r['cpus_per_worker']:g} against 1 x 1: {ratio:.2f}x texts/s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"corpus_texts": texts, "runs": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
