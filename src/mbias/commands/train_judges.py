"""`mbias train-judges`: train the embedded toxicity and bias heads, validate, calibrate, save."""

from __future__ import annotations

import datetime
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from mbias import config
from mbias.commands.common import console, progress_bar, rate_text

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data"
DEFAULT_PAIRS = REPO_ROOT / "data" / "bias"
DEFAULT_JUDGE_DATA = REPO_ROOT / "data" / "judge"


def train_judges(
    data: Annotated[
        Path, typer.Option(help="The shared data folder (paradetox/, toxigen-prompts/, babe/, ...).")
    ] = DEFAULT_DATA,
    pairs: Annotated[
        Path, typer.Option(help="Folder of the project's bias pairs (*.jsonl); used if present.")
    ] = DEFAULT_PAIRS,
    judge_data: Annotated[
        Path, typer.Option(help="Folder with advice.jsonl and negatives.jsonl (data/judge); used if present.")
    ] = DEFAULT_JUDGE_DATA,
    output: Annotated[Path, typer.Option(help="Where heads.json and heads.npz go.")] = config.JUDGE_ASSETS,
    heads: Annotated[
        str, typer.Option(help="'all', or 'category' to retrain only the harm-category head in OUTPUT.")
    ] = "all",
) -> None:
    """Train the judge heads on frozen all-MiniLM-L6-v2 embeddings, then calibrate them on mbias-test."""
    from mbias.errors import MbiasError
    from mbias.judges.calibrate import calibrate, gpt_labels
    from mbias.judges.embedding_cache import EmbeddingCache
    from mbias.judges.encoder import ENCODER_NAME
    from mbias.judges.heads import HeadSet
    from mbias.judges.train_data import head_pools
    from mbias.judges.train_heads import evaluate, train_head

    if heads not in ("all", "category"):
        raise MbiasError(f"--heads must be 'all' or 'category', not {heads!r}")
    cache = EmbeddingCache()
    if heads == "category":
        shipped = HeadSet.load(output / "heads.json")
        _train_category(shipped, cache, pairs, data, judge_data)
        path = shipped.save(output)
        console.print(f"wrote {path}")
        return
    pools, dropped = head_pools(data, pairs, judge_data if judge_data.is_dir() else None)
    every_text = [e.text for pool in pools.values() for e in pool] + [
        j.text for j in gpt_labels(data / "mbias-test")
    ]
    _embed_with_progress(cache, every_text)

    trained = {}
    for name, examples in pools.items():
        console.print(f"[bold]{name}[/]: {len(examples)} texts")
        trained[name] = train_head(examples, cache.embed, log=console.print)
    headset = HeadSet(heads={n: t.head for n, t in trained.items()}, encoder=ENCODER_NAME)
    calibration = calibrate(headset, data / "mbias-test", cache.embed)

    report: dict[str, Any] = {}
    for name, result in trained.items():
        valid = [e for e in pools[name] if e.heldout]
        features = cache.embed([e.text for e in valid])
        report[name] = {
            "model": result.chosen,
            "candidates_macro_roc_auc": result.candidates,
            "counts": result.counts,
            "dropped": dropped[name],
            "validation_at_0.5": result.validation,
            "validation_at_threshold": evaluate(result.head, features, valid, result.head.threshold),
        }
    headset.metadata = {
        "trained_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "training": {
            "split": "mbias.splits.is_heldout(text): held-out texts validate, the rest train",
            "balancing": "source weight ~ sqrt(source size), classes equal within a source",
            "selection": "best validation macro ROC-AUC over sources among the candidates",
            "sources": {
                "toxicity": "ParaDetox toxic + toxic cannot-rewrite comments (1) vs neutral refs (0); "
                "ToxiGen hate (1) vs neutral (0)",
                "bias": "ToxiGen hate (1) vs neutral (0); BABE SG2 Biased (1) vs Non-biased (0); "
                "data/bias pairs: rewritten biased_text (1), debiased_text and kept texts (0); "
                "data/judge advice: discriminatory advice (1) vs fair counterpart (0)",
                "both": "data/judge negatives (0): identity mentions, counter-speech, facts about "
                "discrimination, fair advice, plain LLM-answer prose",
            },
        },
        "validation": report,
        "calibration": calibration,
    }
    _train_category(headset, cache, pairs, data, judge_data)
    path = headset.save(output)
    for name in trained:
        valid, cal = report[name]["validation_at_threshold"], calibration[name]
        console.print(
            f"{name}: {report[name]['model']}, threshold {headset.heads[name].threshold}; validation "
            f"ROC-AUC {valid['all']['roc_auc']} F1 {valid['all']['f1']} acc {valid['all']['accuracy']}; "
            f"vs GPT labels "
            f"ROC-AUC {cal['at_threshold']['roc_auc']} acc {cal['at_threshold']['accuracy']}"
        )
    size = sum(p.stat().st_size for p in output.iterdir() if p.name.startswith("heads."))
    console.print(f"wrote {path} ({size / 1024:.0f} KiB with weights)")


def _train_category(headset: Any, cache: Any, pairs: Path, data: Path, judge_data: Path) -> None:
    """Fit the harm-category head on the training side, report it on the held-out side, attach it."""
    import numpy as np

    from mbias.judges.categories import category_examples, category_report, fit_category_head

    examples = category_examples(pairs, data, judge_data if judge_data.is_dir() else None)
    _embed_with_progress(cache, [e.text for e in examples])
    train = [e for e in examples if not e.heldout]
    valid = [e for e in examples if e.heldout]
    headset.category = fit_category_head(
        cache.embed([e.text for e in train]), np.array([e.label for e in train])
    )
    report = category_report(
        headset.category, cache.embed([e.text for e in valid]), np.array([e.label for e in valid])
    )
    headset.metadata.setdefault("validation", {})["category"] = {"train": len(train), "held_out": report}
    console.print(f"category: held-out accuracy {report['accuracy']} on {report['n']} texts")


def _embed_with_progress(cache: Any, texts: list[str]) -> None:
    start = time.perf_counter()
    with progress_bar("embed") as progress:
        task = progress.add_task("embed", total=None, rate="")

        def update(done: int, total: int) -> None:
            progress.update(
                task, completed=done, total=total, rate=rate_text(done, time.perf_counter() - start)
            )

        cache.embed(texts, on_progress=update)


def register(app: typer.Typer) -> None:
    app.command("train-judges")(train_judges)
