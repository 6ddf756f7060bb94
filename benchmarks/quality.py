"""Quality of a trained adapter against the few-shot base model, on dev texts no training step saw.

Splits (all rows with ``mbias.splits.is_heldout``, which ``mbias train`` never trains on):
  paradetox      toxic sentences of ParaDetox's training file (biased inputs)
  bias-rewrite   the project's bias set, rows annotated "rewrite" (biased inputs)
  bias-keep      the project's bias set, rows annotated "keep" (clean inputs)
  toxigen-hate   ToxiGen hateful seed statements: implicit stereotypes in their raw style (biased)
  toxigen-clean  ToxiGen neutral seed statements (clean inputs)
``--engines hf,llamacpp`` runs the adapter on both engines in the same run (the llama.cpp engine
must stay within 2 points of transformers on every line). Every text is rewritten (no screening)
so the figures measure the model; the embedded judge scores inputs and outputs. An empty output
or a refusal counts as a failure (unsafe, zero retention). The last rows score the people-written
rewrites of the splits that have them (ParaDetox references, the bias set's reviewed targets):
how far the judges let a rewrite people accepted go.

``--product`` adds the product path on the first engine: the embedded judge screens inputs and
verifies the rewrite; ``--retries N`` lets it sample N more when the rewrite fails and pick one;
``--escalate ENGINE`` sends what stays flagged to a second engine.
The judge that picks is the judge that scores, so that line flatters itself;
benchmarks/human_read.py is its independent check.

    python benchmarks/quality.py --limit 100 --out quality.json
    python benchmarks/quality.py --adapter runs/cpu-small --limit 50 --batch-size 16 --out q.json
    python benchmarks/quality.py --engines hf,llamacpp --no-baseline --out parity.json
    python benchmarks/quality.py --engines llamacpp --product --retries 4 --no-baseline --out p.json
    python benchmarks/quality.py --engines llamacpp --product --granularities auto,text --no-baseline \
        --out g.json
    python benchmarks/quality.py --engines llamacpp --adapter src/mbias/assets/mbias-270m-adapter \
        --adapter src/mbias/assets/mbias-1.5b-adapter --limit 60 --out tiers.json   # both tiers
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from mbias.eval.dev import dev_splits, machine

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
BASE = "hf:gguf:gemma-3-270m"


def adapter_settings(adapter: Path) -> dict[str, str]:
    """Base spec and prompt style the adapter was trained with (train_config.json from mbias train)."""
    path = adapter / "train_config.json"
    saved = json.loads(path.read_text()) if path.exists() else {}
    return {"base": saved.get("base", BASE), "prompt_style": saved.get("prompt_style", "mbias")}


def engine_spec(engine: str, base: str, adapter: Path | None) -> str:
    """The spec that runs ``base`` (+ ``adapter``) on ``engine`` ("hf" or "llamacpp")."""
    from mbias.config import gguf_spec

    if base.startswith("hf:gguf:") and engine in ("hf", "llamacpp"):
        return gguf_spec(engine, base.removeprefix("hf:"), adapter)
    if engine != "hf":
        raise SystemExit(f"quality.py: no {engine!r} engine for base {base!r} (engines: hf, llamacpp)")
    return base + (f"+adapter:{adapter}" if adapter else "")


def baseline_style(base: str) -> str:
    """How an untrained base is prompted: its registry entry's style (few-shot for gemma-3-270m,
    its chat template for the instruct 1.5B), few-shot for any other."""
    from mbias.config import registry

    for entry in registry().values():
        if "+" not in entry.spec and entry.spec.endswith(base.removeprefix("hf:")):
            return entry.prompt_style
    return "fewshot"


def rewrite(debiaser: Any, texts: list[str]) -> tuple[list[str], float]:
    """The model's rewrite of each text ('' when it gave nothing usable), and seconds taken."""
    from mbias.intervene import REASON_NO_REWRITE

    start = time.perf_counter()
    records = debiaser.debias(texts)
    seconds = time.perf_counter() - start
    return ["" if r.get("reason") == REASON_NO_REWRITE else r["rewrite"] for r in records], seconds


def figures(
    judge: Any, kind: str, texts: list[str], outputs: list[str], inputs: list[dict]
) -> dict[str, Any]:
    from mbias.eval.metrics import evaluate
    from mbias.splits import normalise

    rows = [{"id": str(i), "text": t, "rewrite": o} for i, (t, o) in enumerate(zip(texts, outputs))]
    summary = evaluate(rows, judge, "text", "rewrite", input_scores=inputs).summary
    changed = [normalise(t) != normalise(o) for t, o in zip(texts, outputs)]
    return {
        "kind": kind,
        "n": len(texts),
        "toxic_pct_before": summary["inputs"]["toxic_pct"],
        "toxic_pct_after": summary["outputs"]["toxic_pct"],
        "toxic_reduction_pct": summary["reduction_pct"]["toxic_pct"],
        "biased_pct_before": summary["inputs"]["biased_pct"],
        "biased_pct_after": summary["outputs"]["biased_pct"],
        "biased_reduction_pct": summary["reduction_pct"]["biased_pct"],
        "similarity_mean": summary["outputs"]["retention"],
        "failed_pct": summary["failed_outputs"]["pct"],
        "changed_pct": 100.0 * sum(changed) / len(changed) if changed else None,
    }


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def table(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    head = (
        "| split | system | n | toxic % before → after | toxic red. % | biased % before → after | "
        "biased red. % | similarity | empty/refusal % | changed % |"
    )
    lines = [head, "| --- | --- | ---: | --- | ---: | --- | ---: | ---: | ---: | ---: |"]
    for system, splits in results.items():
        for split, f in splits.items():
            cells = [
                f"{split} ({f['kind']})",
                system,
                str(f["n"]),
                f"{_cell(f['toxic_pct_before'])} → {_cell(f['toxic_pct_after'])}",
                _cell(f["toxic_reduction_pct"]),
                f"{_cell(f['biased_pct_before'])} → {_cell(f['biased_pct_after'])}",
                _cell(f["biased_reduction_pct"]),
                "-" if f["similarity_mean"] is None else f"{f['similarity_mean']:.3f}",
                _cell(f["failed_pct"]),
                _cell(f["changed_pct"]),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    from mbias.config import DEFAULT_ADAPTER
    from mbias.engines import load_engine
    from mbias.errors import MbiasError
    from mbias.eval.metrics import score_inputs
    from mbias.intervene import Debiaser, DebiasSettings
    from mbias.judges import load_judge

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--adapter",
        action="append",
        help="adapter dir (default: the shipped one); repeat to compare tiers side by side in one run",
    )
    parser.add_argument(
        "--base", default=None, help="base spec (default: from the adapter's train_config.json)"
    )
    parser.add_argument(
        "--engines", default="hf", help="adapter engines, comma list: hf, llamacpp (baseline: the first)"
    )
    parser.add_argument("--limit", type=int, default=100, help="texts per split")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--no-baseline", action="store_true", help="skip the few-shot base model")
    parser.add_argument("--product", action="store_true", help="add the judge-screened product path")
    parser.add_argument(
        "--retries", type=int, default=DebiasSettings.retries, help="the product path's retries"
    )
    parser.add_argument("--escalate", help="the product path's second engine for what stays flagged")
    parser.add_argument(
        "--granularities",
        default="auto",
        help="comma-separated: auto (per sentence, the default path), text (whole text, the path before "
        "sentences); each adds the adapter (and product) lines, in the same run",
    )
    parser.add_argument("--out", required=True, help="JSON file for the figures")
    args = parser.parse_args()

    adapters = [Path(a) for a in args.adapter or [str(DEFAULT_ADAPTER)]]
    for adapter in adapters:
        if not (adapter / "adapter_config.json").exists():
            raise MbiasError(f"{adapter}: no adapter_config.json (train one, or pass --adapter)")
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    judge = load_judge("embedded")
    systems = {}
    bases = []
    for adapter in adapters:
        trained = adapter_settings(adapter)
        base, style = args.base or trained["base"], trained["prompt_style"]
        bases += [base] if base not in bases else []
        label = f"{adapter.name}: " if len(adapters) > 1 else ""
        for granularity in [g.strip() for g in args.granularities.split(",") if g.strip()]:
            suffix = "" if granularity == "auto" else f", granularity {granularity}"
            # with no judge: every text rewritten
            model_only = DebiasSettings(batch_size=args.batch_size, retries=0, granularity=granularity)
            for e in engines:
                systems[f"{label}adapter ({style}, {e}{suffix})"] = (
                    engine_spec(e, base, adapter),
                    style,
                    None,
                    model_only,
                )
            if args.product:
                product = DebiasSettings(
                    batch_size=args.batch_size,
                    retries=args.retries,
                    granularity=granularity,
                    escalate=args.escalate,
                )
                name = f"{label}product: screen {product.screen_margin}, retries {product.retries} "
                name += f"escalate {args.escalate} " if args.escalate else ""
                systems[name + f"({engines[0]}{suffix})"] = (
                    engine_spec(engines[0], base, adapter),
                    style,
                    judge,
                    product,
                )
    for base in [] if args.no_baseline else bases:
        style = baseline_style(base)
        systems[f"base {base.removeprefix('hf:gguf:')} ({style}, {engines[0]})"] = (
            engine_spec(engines[0], base, None),
            style,
            None,
            DebiasSettings(batch_size=args.batch_size, retries=0),
        )
    splits = dev_splits(args.limit)
    inputs = {name: score_inputs(judge, texts) for name, (_, texts, _) in splits.items()}
    results: dict[str, dict[str, dict[str, Any]]] = {}
    timings: dict[str, float] = {}
    for system, (spec, style, picker, settings) in systems.items():
        results[system], timings[system] = {}, 0.0
        debiaser = Debiaser(load_engine(spec), judge=picker, prompt_style=style, settings=settings)
        for name, (kind, texts, _) in splits.items():
            outputs, seconds = rewrite(debiaser, texts)
            timings[system] += seconds
            results[system][name] = figures(judge, kind, texts, outputs, inputs[name])
            print(f"{system} / {name}: {len(texts)} texts in {seconds:.0f} s", flush=True)
    results["human reference (no model)"] = {
        name: figures(judge, kind, texts, refs, inputs[name])
        for name, (kind, texts, refs) in splits.items()
        if refs is not None
    }
    print(table(results))
    report = {
        "machine": machine(),
        "adapters": [str(a) for a in adapters],
        "bases": bases,
        "engines": engines,
        "limit": args.limit,
        "results": results,
        "seconds": timings,
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    from mbias.errors import MbiasError

    try:
        main()
    except MbiasError as exc:
        raise SystemExit(f"quality.py: error: {exc}") from None
