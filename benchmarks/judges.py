"""Embedded judge benchmark: speed, held-out screening figures, false alarms, agreement with GPT labels.

Usage: python benchmarks/judges.py [--data ../shared/data] [--texts 512] [--heads runs/judge/heads.json]
                                  [--reads docs/lab/human-read]
       python benchmarks/judges.py --second llamacpp:gguf:qwen2.5-coder-1.5b [--per-set 40]

Screening figures use the decision the Debiaser makes (``is_unsafe`` at the calibrated thresholds)
on held-out texts only (mbias.splits.is_heldout): ToxiGen statements and bias-set pairs (ROC-AUC of
the larger of the two scores), the discriminatory advice of data/judge (recall; false alarms on
the fair counterparts), the fair sentences and answer prose of data/judge by kind, and
HolisticBias descriptors in neutral templates per axis (false-alarm rate). Agreement with the
blind readers: Cohen's kappa of the judge's verdict on each model rewrite of a held-out text
against each reader's ``unsafe``, and the ROC-AUC of its score (each head's score over its
threshold, the larger of the two).

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
from mbias.judges.train_data import (
    Example,
    advice,
    answer_prose,
    bias_pairs,
    holistic_descriptors,
    identity_phrases,
    negatives,
    toxigen,
)
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
    parser.add_argument(
        "--second", metavar="SPEC", help="only measure the second stage: an LLM judge engine spec (llm:SPEC)"
    )
    parser.add_argument("--per-set", type=int, default=40, help="with --second: held-out texts per set")
    parser.add_argument("--reads", type=Path, default=ROOT / "docs" / "lab" / "human-read")
    args = parser.parse_args()
    if args.second:
        second_stage(EmbeddedJudge(heads_path=args.heads), args.second, args.data, args.per_set)
        return

    judge = EmbeddedJudge(heads_path=args.heads)
    judged = gpt_labels(args.data / "mbias-test")
    texts = thirty_word_texts(list(dict.fromkeys(j.text for j in judged)), args.texts + BATCH)
    rate = throughput(judge, texts)
    print(
        f"throughput: {rate:.1f} texts/s ({WORDS}-word texts, batch {BATCH}, warm, "
        f"torch threads {torch.get_num_threads()})"
    )

    screening(judge, args.data)
    readers(judge, args.reads)
    validation = judge.heads.metadata.get("validation", {})
    print("\nvalidation on held-out texts (stored at training time, calibrated threshold):")
    print(f"{'head':10} {'source':12} {'n':>6} {'ROC-AUC':>8} {'F1':>6} {'acc':>6}")
    for head, report in validation.items():
        if head == "readers":  # fitted on readers' labels, validated by cross-validation
            cv = ", ".join(f"{name} {report[name]['cv_roc_auc']}" for name in ("unsafe", "kept"))
            print(f"{head:10} {'rewrites':12} {report['rewrites']:>6} cross-validated ROC-AUC {cv}")
            continue
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


def readers(judge: EmbeddedJudge, reads: Path) -> None:
    """Kappa and ROC-AUC of the judge against each blind reader on rewrites of held-out texts."""
    from sklearn.metrics import cohen_kappa_score, roc_auc_score

    from mbias.eval.reading import held_out_reads

    rows, labels = held_out_reads(reads)
    if not rows:
        print(f"\nreaders: no sheets read by both readers under {reads}")
        return
    scores = judge.score([candidate for _, candidate in rows])
    flags = np.array([int(judge.is_unsafe(s)) for s in scores])
    nearest = np.array([max(s[name] / t for name, t in judge.thresholds.items()) for s in scores])
    print(f"\nagreement with the blind readers: {len(rows)} rewrites of held-out texts read by both")
    print(f"{'reader':10} {'unsafe':>7} {'kappa':>6} {'ROC-AUC':>8}")
    for name, by_row in labels.items():
        y = np.array([by_row[k] for k in rows])
        kappa, auc = cohen_kappa_score(y, flags), roc_auc_score(y, nearest)
        print(f"{name:10} {y.mean():7.1%} {kappa:6.2f} {auc:8.3f}")


def _flags(judge: EmbeddedJudge, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(unsafe at the calibrated thresholds, larger of the two scores) per text."""
    scores = judge.score(texts)
    return np.array([judge.is_unsafe(s) for s in scores]), np.array([max(s.values()) for s in scores])


def _held_out(examples: list[Example]) -> list[Example]:
    return [e for e in dict.fromkeys(examples) if is_heldout(e.text)]


def holistic_sentences(data: Path) -> dict[str, list[tuple[str, bool]]]:
    """(sentence, descriptor held out) per HolisticBias axis: each descriptor in each neutral
    template. The judge trains on other templates, and never on held-out descriptors."""
    return {
        axis: [
            (template.format(**identity_phrases(term)), is_heldout(term))
            for term in terms
            for template in NEUTRAL_TEMPLATES
        ]
        for axis, terms in holistic_descriptors(data).items()
    }


def screening(judge: EmbeddedJudge, data: Path) -> None:
    """The screen's decisions on held-out texts, as the Debiaser makes them."""
    from sklearn.metrics import roc_auc_score

    print("\nscreening held-out texts (unsafe = either head at its calibrated threshold):")
    for name, examples in (
        ("ToxiGen statements", _held_out(list(toxigen(data)))),
        ("bias-set pairs", _held_out(list(bias_pairs(ROOT / "data" / "bias")))),
        ("discriminatory advice", _held_out(list(advice(ROOT / "data" / "judge", ("advice.jsonl",))))),
        (
            "stereotype / rejection",
            _held_out(list(advice(ROOT / "data" / "judge", ("counter-speech.jsonl",)))),
        ),
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
    fair = _held_out(list(negatives(ROOT / "data" / "judge")) + list(answer_prose(ROOT / "data" / "judge")))
    if fair:
        import json

        kinds = {
            r["text"]: r["kind"]
            for name in ("negatives.jsonl", "prose.jsonl")
            if (ROOT / "data" / "judge" / name).exists()
            for r in map(json.loads, (ROOT / "data" / "judge" / name).read_text().splitlines())
        }
        flags, _ = _flags(judge, [e.text for e in fair])
        for kind in sorted({kinds[e.text] for e in fair}):
            mine = [f for f, e in zip(flags, fair) if kinds[e.text] == kind]
            print(f"  fair {kind:17} n {len(mine):>5}  false alarms {np.mean(mine):.3f}")
    print("false alarms, HolisticBias descriptors in neutral templates, per axis (all / unseen descriptors):")
    for axis, rows in holistic_sentences(data).items():
        flags, _ = _flags(judge, [sentence for sentence, _ in rows])
        unseen = np.array([held for _, held in rows])
        held = f"{flags[unseen].mean():.3f}" if unseen.any() else "-"
        print(f"  {axis:22} n {len(rows):>5} / {unseen.sum():>4}  false alarms {flags.mean():.3f} / {held}")
    sentences = [e.text for e in fair] or [e.text for e in _held_out(list(toxigen(data)))]
    start = time.perf_counter()
    judge.score([f"{t} ({i})" for i, t in enumerate(sentences * 2)])  # distinct: no memo hits
    rate = 2 * len(sentences) / (time.perf_counter() - start)
    print(f"sentences/s (screening one sentence at a time in batches): {rate:.0f}")


def second_stage(first: EmbeddedJudge, spec: str, data: Path, per_set: int) -> None:
    """Decisions of the embedded judge alone and with an LLM judge on its uncertain band, on the
    same held-out samples (every n-th text, so both classes of each set stay represented)."""
    from mbias.judges.cascade import CascadeJudge
    from mbias.judges.llm import LLMJudge

    cascade = CascadeJudge(first, LLMJudge(spec))
    sets = {
        "ToxiGen statements": _held_out(list(toxigen(data))),
        "discriminatory advice": _held_out(list(advice(ROOT / "data" / "judge", ("advice.jsonl",)))),
        "fair sentences": _held_out(list(negatives(ROOT / "data" / "judge"))),
    }
    print(f"second stage {cascade.name}, band {cascade.band} x threshold, {per_set} held-out texts a set:")
    print(f"{'set':22} {'judge':9} {'recall':>6} {'false alarms':>12} {'asked':>5} {'s/text':>6}")
    for name, examples in sets.items():
        sample = examples[:: max(1, len(examples) // per_set)][:per_set]
        labels = np.array([e.label for e in sample])
        texts = [e.text for e in sample]
        asked = cascade.asked
        start = time.perf_counter()
        for label, judge in (("embedded", first), ("+ LLM", cascade)):
            flags, _ = _flags(judge, texts)
            recall = f"{flags[labels == 1].mean():.3f}" if (labels == 1).any() else "-"
            alarms = f"{flags[labels == 0].mean():.3f}" if (labels == 0).any() else "-"
            extra = (
                f"{cascade.asked - asked:>5} {(time.perf_counter() - start) / len(texts):>6.2f}"
                if judge is cascade
                else ""
            )
            print(f"{name:22} {label:9} {recall:>6} {alarms:>12} {extra}")
    print(f"second-stage answers unusable (first stage kept): {cascade.failed} of {cascade.asked}")


if __name__ == "__main__":
    main()
