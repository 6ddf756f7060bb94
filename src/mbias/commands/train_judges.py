"""`mbias train-judges`: tune the judge's encoder, fit its heads, choose thresholds on dev, save."""

from __future__ import annotations

import contextlib
import datetime
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from mbias import config
from mbias.commands.common import console, progress_bar, rate_text
from mbias.errors import MbiasError
from mbias.records import check_writable

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data"
DEFAULT_PAIRS = REPO_ROOT / "data" / "bias"
DEFAULT_JUDGE_DATA = REPO_ROOT / "data" / "judge"


ENCODER_ADAPTER = "encoder"  # the tuned encoder's LoRA, beside heads.json


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
    reads: Annotated[
        Path | None,
        typer.Option(
            help="Folder of blind reads (training-*/sheet-*.jsonl, e.g. docs/lab/human-read): fit the "
            "reader heads, which order a rewrite's candidates by what readers said of rewrites."
        ),
    ] = None,
    output: Annotated[Path, typer.Option(help="Where heads.json and heads.npz go.")] = config.JUDGE_ASSETS,
    heads: Annotated[
        str,
        typer.Option(
            help="'all'; 'category', or 'readers' with --reads, to refit only that part of OUTPUT's judge."
        ),
    ] = "all",
    encoder: Annotated[
        str,
        typer.Option(
            help="'tune': fine-tune the encoder (LoRA) on the heads' labels first; 'frozen': heads only."
        ),
    ] = "tune",
    epochs: Annotated[
        float, typer.Option(help="Passes over the training texts when tuning the encoder.")
    ] = 1.0,
) -> None:
    """Train the judge: tune the encoder, fit the heads, choose thresholds on the dev split, save."""
    from mbias.judges.categories import category_examples
    from mbias.judges.embedding_cache import EmbeddingCache
    from mbias.judges.heads import HeadSet
    from mbias.judges.train_data import head_pools

    if heads not in ("all", "category", "readers"):
        raise MbiasError(f"--heads must be 'all', 'category' or 'readers', not {heads!r}")
    if heads == "readers" and reads is None:
        raise MbiasError("--heads readers needs --reads: the folder of blind reads to learn from")
    if encoder not in ("tune", "frozen"):
        raise MbiasError(f"--encoder must be 'tune' or 'frozen', not {encoder!r}")
    output = output.resolve()
    if output.exists() and not output.is_dir():
        raise MbiasError(f"{output}: is a file; --output takes a folder")
    check_writable(output.parent)
    judge_dir = judge_data if judge_data.is_dir() else None
    if reads is not None and not reads.is_dir():
        raise MbiasError(f"--reads {reads}: not a folder")
    if reads is not None:
        _reader_rows(reads)  # a folder without enough labels fails now, not after the encoder's tuning
    elif heads == "all" and (output / "heads.json").is_file() and HeadSet.load(output / "heads.json").readers:
        console.print(
            "[yellow]without --reads the new judge has no reader heads; --candidates then orders by "
            "similarity (pass --reads docs/lab/human-read to keep them)[/]"
        )
    if heads == "readers":
        shipped = HeadSet.load(output / "heads.json")
        with _staged(output, keep_trained=True) as staging:
            _train_readers(shipped, reads)
            shipped.save(staging)
        console.print(f"wrote {output / 'heads.json'}")
        return
    pools, dropped = head_pools(data, pairs, judge_dir)
    if heads == "category":
        shipped = HeadSet.load(output / "heads.json")
        cache = EmbeddingCache(adapter=shipped.adapter)
        with _staged(output, keep_trained=True) as staging:
            _train_category(shipped, cache, pairs, data, judge_dir, pools["bias"])
            shipped.save(staging)
        console.print(f"wrote {output / 'heads.json'}")
        return
    categories = category_examples(pairs, data, judge_dir)
    with _staged(output) as staging:
        _train_all(pools, dropped, categories, staging, encoder, epochs, pairs, data, judge_dir, reads)
    size = sum(p.stat().st_size for p in output.rglob("*") if p.is_file() and p.name != "README.md")
    console.print(f"wrote {output / 'heads.json'} ({size / 1024:.0f} KiB with weights and adapter)")


TRAINED = ("heads.json", "heads.npz", ENCODER_ADAPTER)  # what a run writes into its output folder


@contextlib.contextmanager
def _staged(output: Path, keep_trained: bool = False) -> Iterator[Path]:
    """A folder beside ``output`` to train into, swapped in whole once every file is written. A
    run stopped halfway (Ctrl-C, a crash) leaves the judge in ``output`` as it was: a new encoder
    beside the old heads would score every text wrongly and say nothing, and ``output`` is by
    default the installed package's own judge. Other files there (a README) carry over, and with
    ``keep_trained`` the old judge too, for a run that replaces only part of it."""
    output = output.resolve()  # "." has no name to stage beside; a link's target is the judge
    staging = output.with_name(f".{output.name}-training-{secrets.token_hex(4)}")
    staging.mkdir()  # as any new folder (umask), not mkdtemp's owner-only mode
    try:
        for item in output.iterdir() if output.is_dir() else ():
            if keep_trained or item.name not in TRAINED:
                copy = shutil.copytree if item.is_dir() else shutil.copy2
                copy(item, staging / item.name)
        yield staging
        old = output.with_name(f".{output.name}-replaced-{os.getpid()}")
        if output.exists():
            os.rename(output, old)
        try:
            os.rename(staging, output)
        except OSError:
            if old.exists():
                os.rename(old, output)  # the judge that was there stays there
            raise
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _train_all(
    pools: dict,
    dropped: dict,
    categories: list,
    output: Path,
    encoder: str,
    epochs: float,
    pairs: Path,
    data: Path,
    judge_dir: Path | None,
    reads: Path | None,
) -> None:
    """Tune the encoder (or not), fit and calibrate every head, and save the judge in ``output``."""
    from mbias.judges.calibrate import calibrate
    from mbias.judges.embedding_cache import EmbeddingCache
    from mbias.judges.encoder import ENCODER_NAME
    from mbias.judges.heads import HeadSet
    from mbias.judges.train_heads import evaluate, train_head

    adapter = output / ENCODER_ADAPTER
    tuning = _tune(pools, categories, adapter, epochs) if encoder == "tune" else None
    cache = EmbeddingCache(adapter=adapter if tuning else None)
    _embed_with_progress(cache, [e.text for pool in pools.values() for e in pool])

    trained = {}
    for name, examples in pools.items():
        console.print(f"[bold]{name}[/]: {len(examples)} texts")
        trained[name] = train_head(examples, cache.embed, log=console.print)
    headset = HeadSet(
        heads={n: t.head for n, t in trained.items()}, encoder=ENCODER_NAME, adapter=cache.adapter
    )
    thresholds = calibrate(headset, pools, cache.embed)

    report: dict[str, Any] = {}
    for name, result in trained.items():
        valid = [e for e in pools[name] if e.heldout]
        features = cache.embed([e.text for e in valid])
        report[name] = {
            "model": result.chosen,
            "candidates_dev_macro_roc_auc": result.candidates,
            "counts": result.counts,
            "dropped": dropped[name],
            "validation_at_0.5": result.validation,
            "validation_at_threshold": evaluate(result.head, features, valid, result.head.threshold),
        }
    headset.metadata = {
        "trained_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "training": {
            "split": "mbias.splits: training side trains (encoder and heads), dev (is_dev) chooses the "
            "head model and threshold, held out (is_heldout) validates",
            "encoder": "LoRA fine-tuned on the heads' labels (encoder/tuning.json)" if tuning else "frozen",
            "balancing": "source weight ~ sqrt(source size), classes equal within a source",
            "selection": "best dev macro ROC-AUC over sources among the candidates",
            "sources": {
                "toxicity": "ParaDetox toxic + toxic cannot-rewrite comments (1) vs neutral refs (0); "
                "ToxiGen hate (1) vs neutral (0)",
                "bias": "ToxiGen hate (1) vs neutral (0); BABE SG2 Biased (1) vs Non-biased (0); "
                "data/bias pairs: rewritten biased_text (1), debiased_text and kept texts (0); "
                "data/judge paired files: discriminatory advice and stereotypes (1) vs their fair "
                "counterparts and rejections (0)",
                "both": "data/judge negatives (0): identity mentions, counter-speech, facts about "
                "discrimination, fair advice, plain LLM-answer prose; data/judge prose (0), a source "
                "of its own: assistant-answer facts, how-tos and advice about people; HolisticBias "
                "descriptors (training side) in neutral templates other than the benchmark's",
            },
        },
        "validation": report,
        "thresholds": thresholds,
    }
    _train_category(headset, cache, pairs, data, judge_dir, pools["bias"], categories)
    if reads is not None:
        _train_readers(headset, reads)
    headset.save(output)
    for name in trained:
        valid = report[name]["validation_at_threshold"]
        console.print(
            f"{name}: {report[name]['model']}, threshold {headset.heads[name].threshold} (dev); held-out "
            f"ROC-AUC {valid['all']['roc_auc']} F1 {valid['all']['f1']} acc {valid['all']['accuracy']}"
        )


def _tune(pools: dict, categories: list, adapter: Path, epochs: float) -> dict[str, Any]:
    """Fine-tune the encoder with a progress bar; returns its summary."""
    from mbias.judges.tune_encoder import EncoderTuning, tune_encoder

    with progress_bar("tune encoder") as progress:
        task = progress.add_task("tune encoder", total=None, rate="")

        def update(step: int, steps: int, loss: float) -> None:
            progress.update(task, completed=step, total=steps, rate=f"loss {loss:.3f}")

        summary = tune_encoder(pools, categories, adapter, EncoderTuning(epochs=epochs), on_step=update)
    console.print(
        f"encoder: {summary['steps']} steps on {summary['texts']} texts, loss "
        f"{summary['loss_first_tenth']} -> {summary['loss_last_tenth']} ({summary['wall_time_s']:.0f} s)"
    )
    return summary


def _train_category(
    headset: Any,
    cache: Any,
    pairs: Path,
    data: Path,
    judge_dir: Path | None,
    bias_pool: list,
    examples: list | None = None,
) -> None:
    """Fit the harm-category head on the training side, report it on the held-out side, choose its
    threshold for the screen's suspects on the bias head's dev split, attach it."""
    import numpy as np

    from mbias.judges.categories import (
        category_examples,
        category_report,
        fit_category_head,
        suspect_threshold,
    )

    examples = examples if examples is not None else category_examples(pairs, data, judge_dir)
    _embed_with_progress(cache, [e.text for e in examples])
    train = [e for e in examples if e.trains]
    valid = [e for e in examples if e.heldout]
    headset.category = fit_category_head(
        cache.embed([e.text for e in train]), np.array([e.label for e in train])
    )
    report = category_report(
        headset.category, cache.embed([e.text for e in valid]), np.array([e.label for e in valid])
    )
    headset.metadata.setdefault("validation", {})["category"] = {"train": len(train), "held_out": report}
    dev = [e for e in bias_pool if e.dev]
    _embed_with_progress(cache, [e.text for e in dev])
    headset.category.threshold = suspect_threshold(headset, dev, cache.embed([e.text for e in dev]))
    console.print(
        f"category: held-out accuracy {report['accuracy']} on {report['n']} texts; a suspect goes to the "
        f"rewriter from top probability {headset.category.threshold} (dev)"
    )


def _reader_rows(reads: Path) -> list:
    """The labelled rewrites the reader heads learn from; refused when there are too few to fit."""
    from mbias.judges.readers import MIN_REWRITES, SHEETS, reader_rows

    rows = reader_rows(reads)
    if len(rows) < MIN_REWRITES:
        raise MbiasError(
            f"--reads {reads}: {len(rows)} labelled rewrites in {SHEETS}; the reader heads need "
            f"{MIN_REWRITES} or more"
        )
    return rows


def _train_readers(headset: Any, reads: Path) -> None:
    """Fit the reader heads on the readers' labels of training rewrites under ``reads``, with the
    judge's own vectors and scores as features, and attach them."""
    from mbias.judges.embedded import EmbeddedJudge
    from mbias.judges.readers import fit_reader_heads, pair_features

    rows = _reader_rows(reads)
    headset.readers = {}  # the features read the text heads only
    judge = EmbeddedJudge(heads=headset)
    with console.status(f"reader heads: {len(rows)} labelled rewrites"):
        features = pair_features(judge, [r[0] for r in rows], [r[1] for r in rows])
        headset.readers, report = fit_reader_heads(features, rows)
    headset.metadata.setdefault("validation", {})["readers"] = report
    console.print(
        f"reader heads: {len(rows)} rewrites; cross-validated ROC-AUC unsafe "
        f"{report['unsafe']['cv_roc_auc']}, meaning kept {report['kept']['cv_roc_auc']}"
    )


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
