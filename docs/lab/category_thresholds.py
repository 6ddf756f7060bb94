"""Does one threshold per harm category beat one per head? (issue 18, build item 4)

The shipped judge flags a text when a head's probability reaches that head's one threshold. A
category-aware judge would let, say, religion texts need a higher bias score than age texts. This
script fits that on the dev split (per head, per predicted category with at least ``--min-dev``
dev texts of both classes; the head's own threshold otherwise), with the same rule as
``mbias.judges.calibrate`` (balanced accuracy averaged over sources), and compares both on the
held-out texts of every source, so nothing the script chooses sees the figures it prints.

    python docs/lab/category_thresholds.py [--data ../shared/data] [--min-dev 40]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from mbias.judges.calibrate import THRESHOLD_GRID, macro_balanced_accuracy
from mbias.judges.embedded import EmbeddedJudge
from mbias.judges.train_data import head_pools


def per_category(
    probs: np.ndarray, labels: np.ndarray, sources: np.ndarray, cats: np.ndarray, default: float, min_dev: int
) -> dict[str, float]:
    chosen = {}
    for cat in np.unique(cats):
        mask = cats == cat
        if min(int((labels[mask] == 1).sum()), int((labels[mask] == 0).sum())) < min_dev // 2:
            continue
        scores = macro_balanced_accuracy(labels[mask], probs[mask], sources[mask])
        chosen[str(cat)] = float(THRESHOLD_GRID[int(np.argmax(scores))])
    return {c: chosen.get(c, default) for c in map(str, np.unique(cats))}


def figures(flags: np.ndarray, labels: np.ndarray, sources: np.ndarray) -> dict[str, tuple]:
    """Per source: recall on 1s, false-alarm rate on 0s, texts."""
    out = {}
    for source in np.unique(sources):
        m = sources == source
        pos, neg = m & (labels == 1), m & (labels == 0)
        recall = flags[pos].mean() if pos.any() else float("nan")
        false = flags[neg].mean() if neg.any() else float("nan")
        out[str(source)] = (recall, false, int(m.sum()))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--pairs", type=Path, default=Path("data/bias"))
    parser.add_argument("--judge-data", type=Path, default=Path("data/judge"))
    parser.add_argument("--min-dev", type=int, default=40)
    args = parser.parse_args()

    judge = EmbeddedJudge()
    pools, _ = head_pools(args.data, args.pairs, args.judge_data)
    for name, head in judge.heads.heads.items():
        if name not in pools:
            continue
        dev = [e for e in pools[name] if e.dev]
        held = [e for e in pools[name] if e.heldout]
        parts = {}
        for split, examples in (("dev", dev), ("held", held)):
            vectors = judge.embed([e.text for e in examples])
            parts[split] = (
                head.predict_proba(vectors),
                np.array([e.label for e in examples]),
                np.array([e.source for e in examples]),
                np.array(judge.heads.category.predict_labels(vectors)),
            )
        thresholds = per_category(*parts["dev"], default=head.threshold, min_dev=args.min_dev)
        probs, labels, sources, cats = parts["held"]
        single = probs >= head.threshold
        multi = probs >= np.array([thresholds.get(str(c), head.threshold) for c in cats])
        print(f"\n{name}: one threshold {head.threshold:.3f}; per category on dev:")
        print("  " + ", ".join(f"{c} {t:.3f}" for c, t in sorted(thresholds.items())))
        print(f"  held out: {len(held)} texts, balanced accuracy averaged over sources")
        for label, flags in (("one", single), ("per category", multi)):
            macro = macro_balanced_accuracy(labels, flags.astype(float), sources, np.array([0.5]))[0]
            print(f"    {label:>12}: {macro:.4f}")
        print(f"  {'source':22} {'n':>5} {'recall one/per-cat':>20} {'false alarms one/per-cat':>26}")
        one, per = figures(single, labels, sources), figures(multi, labels, sources)
        for source in one:
            r1, f1, n = one[source]
            r2, f2, _ = per[source]
            print(f"  {source:22} {n:>5} {r1:>9.3f} / {r2:<8.3f} {f1:>13.3f} / {f2:<8.3f}")


if __name__ == "__main__":
    main()
