"""How well the shipped judge's reader heads agree with blind readers on held-out rewrites, and
what choosing among candidates by them would have given, against the judge's old order.

Every labelled (input, rewrite) row of the held-out sheets under docs/lab/human-read (first
reader's files; never the training-* sheets the heads were fitted on) is scored; the inputs with
three or more labelled model rewrites (people's rewrites and copies left out) are the choice test.

    python docs/lab/choose_by_readers.py
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from mbias.eval.reading import REFERENCE, read_labels
from mbias.judges.embedded import EmbeddedJudge
from mbias.judges.readers import pair_features

READS = Path(__file__).parent / "human-read"


def held_out_sheets() -> list[Path]:
    return [
        p
        for p in sorted(READS.rglob("*.jsonl"))
        if "training-" not in str(p) and "/reader" not in str(p.relative_to(READS))
    ]


def people_rows(sheets: list[Path]) -> set[tuple[str, str]]:
    rows = set()
    for sheet in sheets:
        key = Path(f"{sheet}.key.json")
        if key.is_file():
            lines = [json.loads(line) for line in sheet.read_text().splitlines()]
            for row, systems in zip(lines, json.loads(key.read_text())["rows"]):
                if REFERENCE in systems:
                    rows.add((row["text"], row["candidate"]))
    return rows


def main() -> None:
    judge = EmbeddedJudge()
    sheets = held_out_sheets()
    labels = {
        k: v
        for k, v in read_labels([str(p) for p in sheets]).items()
        if k[1].strip() and v.get("meaning_kept") in (0, 1)
    }
    keys = list(labels)
    features = pair_features(judge, [k[0] for k in keys], [k[1] for k in keys])
    unsafe = np.array([labels[k]["unsafe"] for k in keys])
    kept = np.array([labels[k]["meaning_kept"] for k in keys])
    p_unsafe = judge.heads.readers["unsafe"].predict_proba(features)
    p_kept = judge.heads.readers["kept"].predict_proba(features)
    scores = judge.score([k[1] for k in keys])
    similarity = np.array(judge.similarity([k[0] for k in keys], [k[1] for k in keys]))
    print(
        f"{len(keys)} held-out rewrites labelled both ways "
        f"({unsafe.mean():.1%} unsafe, {kept.mean():.1%} kept)"
    )
    print(
        f"  unsafe: reader head ROC-AUC {roc_auc_score(unsafe, p_unsafe):.3f}, judge's bias score "
        f"{roc_auc_score(unsafe, [s['bias'] for s in scores]):.3f}"
    )
    print(
        f"  kept:   reader head ROC-AUC {roc_auc_score(kept, p_kept):.3f}, "
        f"similarity {roc_auc_score(kept, similarity):.3f}"
    )

    people = people_rows(sheets)
    # the best-of-5 reads hold a rewrite these heads chose: not a fair test of choosing
    chosen_by_heads = {k for p in sheets if "best-of-5" in str(p) for k in read_labels([str(p)])}
    groups = defaultdict(list)
    for i, (text, candidate) in enumerate(keys):
        if (text, candidate) not in people | chosen_by_heads and candidate.strip() != text.strip():
            groups[text].append(i)
    groups = [g for g in groups.values() if len(g) >= 3]
    acceptability = (1 - p_unsafe) * p_kept
    rng = random.Random(0)

    def old_order(i: int) -> tuple:
        return (judge.is_unsafe(scores[i]), similarity[i] < 0.5, -similarity[i])

    picks = {
        "random": [rng.choice(g) for g in groups],
        "judge, then similarity (the old order)": [min(g, key=old_order) for g in groups],
        "reader heads, similarity >= 0.5 first (shipped)": [
            min(g, key=lambda i: (similarity[i] < 0.5, -acceptability[i])) for g in groups
        ],
        "judge, then reader heads": [
            min(g, key=lambda i: (judge.is_unsafe(scores[i]), similarity[i] < 0.5, -acceptability[i]))
            for g in groups
        ],
        "best possible": [max(g, key=lambda i: (1 - unsafe[i]) * kept[i]) for g in groups],
    }
    print(
        f"choice among >= 3 labelled model rewrites: {len(groups)} inputs, "
        f"{np.mean([len(g) for g in groups]):.1f} rewrites each"
    )
    for name, chosen in picks.items():
        u, k = unsafe[chosen].mean(), kept[chosen].mean()
        both = ((1 - unsafe[chosen]) * kept[chosen]).mean()
        print(f"  {name:>40}: unsafe {u:.1%}, meaning kept {k:.1%}, safe and kept {both:.1%}")


if __name__ == "__main__":
    main()
