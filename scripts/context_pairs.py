"""Training pairs with neighbouring sentences, so an adapter learns the prompt a sentence of an answer gets.

The Debiaser rewrites one sentence of an LLM answer at a time and shows the model the sentences
before and after it (``Before:`` / ``After:`` lines, mbias.prompts). An adapter trained on lone
sentences never saw those lines; this script gives a share of the bias-set pairs neighbours drawn
from fair, everyday prose (data/judge/negatives.jsonl: the plain-prose and fair-advice kinds), so
one training file holds both prompt shapes. The rewrite target is unchanged: only the sentence is
rewritten, never its neighbours.

    python scripts/context_pairs.py --share 0.5 -o runs/context-pairs.jsonl
    python scripts/context_pairs.py --pairs data/preferences/mined-v5.jsonl \
        data/preferences/mined-dpo-round1.jsonl -o runs/context-prefs.jsonl   # for train --method dpo
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NEIGHBOUR_KINDS = ("plain-prose", "fair-advice")


def neighbours(path: Path) -> list[str]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r["text"] for r in rows if r.get("kind") in NEIGHBOUR_KINDS]


def with_context(rows: list[dict], pool: list[str], share: float, seed: int) -> list[dict]:
    """Each row, and for ``share`` of them the same pair with one sentence before, after, or both."""
    rng = random.Random(seed)
    out = []
    for row in rows:
        if rng.random() < share:
            side = rng.choice(("before", "after", "both"))
            row = {
                **row,
                "context_before": rng.choice(pool) if side in ("before", "both") else "",
                "context_after": rng.choice(pool) if side in ("after", "both") else "",
            }
        out.append(row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--pairs", nargs="+", default=[str(ROOT / "data" / "bias")], help="pair files or folders of *.jsonl"
    )
    parser.add_argument("--sentences", default=str(ROOT / "data" / "judge" / "negatives.jsonl"))
    parser.add_argument("--share", type=float, default=0.5, help="share of pairs given neighbours")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--out", required=True)
    args = parser.parse_args()
    rows = []
    for given in args.pairs:
        given = Path(given)
        for path in sorted(given.glob("*.jsonl")) if given.is_dir() else [given]:
            rows += [
                json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
            ]
    made = with_context(rows, neighbours(Path(args.sentences)), args.share, args.seed)
    # files mined in different rounds reuse ids: number the rows, keep where each came from
    made = [{**row, "id": f"ctx-{i:05d}", "source_id": row.get("id")} for i, row in enumerate(made)]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as handle:
        for row in made:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(
        f"wrote {len(made)} pairs to {args.out}, {sum('context_before' in r for r in made)} with neighbours"
    )


if __name__ == "__main__":
    main()
