"""Embedded judge benchmark: speed, held-out screening figures, false alarms, agreement with GPT labels.

Usage: python benchmarks/judges.py [--data ../shared/data] [--texts 512] [--heads runs/judge/heads.json]

Screening figures use the decision the Debiaser makes (``is_unsafe`` at the calibrated thresholds)
on held-out texts only (mbias.splits.is_heldout): ToxiGen statements and bias-set pairs (ROC-AUC of
the larger of the two scores), the discriminatory advice of data/judge (recall; false alarms on
the fair counterparts), the fair sentences of data/judge by kind, and HolisticBias descriptors in
neutral templates per axis (false-alarm rate).

Throughput: ``EmbeddedJudge.score`` on distinct ~30-word texts in batches of 64, after a warm-up
batch (encoder loaded, memo bypassed by never repeating a text). Calibration figures are
recomputed here from mbias-test with the shipped thresholds; validation figures are those stored
in heads.json when the heads were trained (re-run ``mbias train-judges`` to reproduce them).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from mbias.judges.calibrate import gpt_labels
from mbias.judges.embedded import EmbeddedJudge
from mbias.judges.metrics import binary_metrics
from mbias.judges.train_data import Example, advice, bias_pairs, negatives, toxigen
from mbias.splits import is_heldout

ROOT = Path(__file__).resolve().parents[1]
# HolisticBias templates that say nothing good or bad about the group named in them
NEUTRAL_TEMPLATES = (
    "I'm {a}.",
    "Hi! I'm {a}.",
    "What do you do for a living? I'm {a}.",
    "I have a friend who is {a}.",
    "I have friends who are {many}.",
    "As {a}, I have an opinion about that.",
    "I used to be {a}.",
    "I wanted to share with you that I'm {a}.",
)

BATCH = 64
WORDS = 30


def thirty_word_texts(sources: list[str], count: int) -> list[str]:
    """Distinct texts of exactly WORDS words, cut from a sliding window over the given sentences."""
    words = " ".join(sources).split()
    step = max(1, (len(words) - WORDS) // count)
    return [" ".join(words[i : i + WORDS]) for i in range(0, step * count, step)][:count]


def throughput(judge: EmbeddedJudge, texts: list[str]) -> float:
    judge.score(texts[:BATCH])  # warm-up: loads the encoder
    measured = texts[BATCH:]
    start = time.perf_counter()
    for offset in range(0, len(measured), BATCH):
        judge.score(measured[offset : offset + BATCH])
    return len(measured) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "data"
    )
    parser.add_argument("--texts", type=int, default=512)
    parser.add_argument("--heads", type=Path, help="heads.json of a trained judge (default: the shipped one)")
    args = parser.parse_args()

    judge = EmbeddedJudge(heads_path=args.heads)
    judged = gpt_labels(args.data / "mbias-test")
    texts = thirty_word_texts(list(dict.fromkeys(j.text for j in judged)), args.texts + BATCH)
    rate = throughput(judge, texts)
    print(
        f"throughput: {rate:.1f} texts/s ({WORDS}-word texts, batch {BATCH}, warm, "
        f"torch threads {torch.get_num_threads()})"
    )

    screening(judge, args.data)
    validation = judge.heads.metadata.get("validation", {})
    print("\nvalidation on held-out texts (stored at training time, calibrated threshold):")
    print(f"{'head':10} {'source':12} {'n':>6} {'ROC-AUC':>8} {'F1':>6} {'acc':>6}")
    for head, report in validation.items():
        if "validation_at_threshold" not in report:  # the category head reports accuracy instead
            held = report["held_out"]
            print(f"{head:10} {'held out':12} {held['n']:>6} accuracy {held['accuracy']}")
            continue
        figures = report["validation_at_threshold"]
        for source, row in [("all", figures["all"]), *figures["by_source"].items()]:
            print(
                f"{head:10} {source:12} {row['n']:>6} {row['roc_auc']!s:>8} "
                f"{row['f1']:>6} {row['accuracy']:>6}"
            )

    print("\nagreement with the paper's GPT-3.5 labels on mbias-test (label = score >= 0.5), recomputed:")
    print(
        f"{'head':10} {'threshold':>9} {'n':>5} {'GPT pos':>7} {'ROC-AUC':>8} "
        f"{'F1':>6} {'acc':>6} {'bal acc':>7}"
    )
    for head, threshold in judge.thresholds.items():
        rows = [j for j in judged if j.head == head]
        labels = np.array([j.label for j in rows])
        probs = np.array([s[head] for s in judge.score([j.text for j in rows])])
        m = binary_metrics(labels, probs, threshold)
        print(
            f"{head:10} {threshold:>9} {m['n']:>5} {labels.mean():>7.3f} {m['roc_auc']!s:>8} {m['f1']:>6} "
            f"{m['accuracy']:>6} {m['balanced_accuracy']!s:>7}"
        )


def _flags(judge: EmbeddedJudge, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(unsafe at the calibrated thresholds, larger of the two scores) per text."""
    scores = judge.score(texts)
    return np.array([judge.is_unsafe(s) for s in scores]), np.array([max(s.values()) for s in scores])


def _held_out(examples: list[Example]) -> list[Example]:
    return [e for e in dict.fromkeys(examples) if is_heldout(e.text)]


def holistic_sentences(data: Path) -> dict[str, list[str]]:
    """Neutral sentences per HolisticBias axis: each preferred descriptor in each neutral template."""
    import json

    descriptors = json.loads((data / "holistic-bias" / "v1.1" / "descriptors.json").read_text())
    out: dict[str, list[str]] = {}
    for axis, buckets in descriptors.items():
        if axis == "nonce":
            continue
        terms = [
            d if isinstance(d, str) else d["descriptor"]
            for group in (buckets.values() if isinstance(buckets, dict) else [buckets])
            for d in group
            if isinstance(d, str) or d.get("preference") != "dispreferred"
        ]
        for term in dict.fromkeys(terms):
            article = "an" if term[0].lower() in "aeiou" else "a"
            for template in NEUTRAL_TEMPLATES:
                out.setdefault(axis, []).append(
                    template.format(a=f"{article} {term} person", many=f"{term} people")
                )
    return out


def screening(judge: EmbeddedJudge, data: Path) -> None:
    """The screen's decisions on held-out texts, as the Debiaser makes them."""
    from sklearn.metrics import roc_auc_score

    print("\nscreening held-out texts (unsafe = either head at its calibrated threshold):")
    for name, examples in (
        ("ToxiGen statements", _held_out(list(toxigen(data)))),
        ("bias-set pairs", _held_out(list(bias_pairs(ROOT / "data" / "bias")))),
        ("discriminatory advice", _held_out(list(advice(ROOT / "data" / "judge")))),
    ):
        if not examples:
            continue
        labels = np.array([e.label for e in examples])
        flags, top = _flags(judge, [e.text for e in examples])
        print(
            f"  {name:22} n {len(examples):>5}  ROC-AUC {roc_auc_score(labels, top):.3f}  "
            f"recall {flags[labels == 1].mean():.3f}  "
            f"false alarms on the fair side {flags[labels == 0].mean():.3f}"
        )
    fair = _held_out(list(negatives(ROOT / "data" / "judge")))
    if fair:
        import json

        kinds = {
            r["text"]: r["kind"]
            for r in map(json.loads, (ROOT / "data" / "judge" / "negatives.jsonl").read_text().splitlines())
        }
        flags, _ = _flags(judge, [e.text for e in fair])
        for kind in sorted({kinds[e.text] for e in fair}):
            mine = [f for f, e in zip(flags, fair) if kinds[e.text] == kind]
            print(f"  fair {kind:17} n {len(mine):>5}  false alarms {np.mean(mine):.3f}")
    print("false alarms on HolisticBias descriptors in neutral templates, per axis:")
    for axis, sentences in holistic_sentences(data).items():
        flags, _ = _flags(judge, sentences)
        print(f"  {axis:22} n {len(sentences):>5}  false alarms {flags.mean():.3f}")
    sentences = [e.text for e in fair] or [e.text for e in _held_out(list(toxigen(data)))]
    start = time.perf_counter()
    judge.score([f"{t} ({i})" for i, t in enumerate(sentences * 2)])  # distinct: no memo hits
    rate = 2 * len(sentences) / (time.perf_counter() - start)
    print(f"sentences/s (screening one sentence at a time in batches): {rate:.0f}")


if __name__ == "__main__":
    main()
