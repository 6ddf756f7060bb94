"""A blind human read of rewrites: is the output still biased or toxic? Separates the model from the judge.

The embedded judges flag people-written rewrites too (21 % of the bias set's reviewed targets are
judged toxic), so their figures mix model errors with judge errors. This script writes a sheet of
(input, candidate) rows from one or more adapters and, where the split has them, the people-written
rewrites, shuffled and without saying which system wrote which; a person fills in ``unsafe`` (1:
still biased or toxic by docs/ANNOTATION.md, 0: fair); ``tally`` then un-blinds the sheet.

    python benchmarks/human_read.py sheet --split bias-rewrite --system v3=runs/mbias-270m-v3 --out read.jsonl
    # fill in "unsafe" on every row of read.jsonl, then
    python benchmarks/human_read.py tally read.jsonl

``--product NAME=ADAPTER`` adds what ``mbias debias --retries R`` returns (judge screen and
verification, ``--retries`` samples when the rewrite fails) next to the greedy rewrites of
``--system``: the read that says whether the judge's choices fix texts or only slip them under it.
``--product NAME=ADAPTER@ENGINE`` is that product with ``--escalate ENGINE``; ``--candidates NAME=N``
gives product NAME N candidates (the greedy one and N - 1 samples, ordered by the judge's reader heads);
``--judge NAME=SPEC`` gives product NAME another judge (``embedded:DIR``, a trained judge), so one
sheet reads two judges' screens and choices side by side.
``--exclude SHEET`` skips the inputs of an earlier sheet, for a read on texts nobody has read yet.

Candidates already labelled in earlier sheets (``--labels``) come pre-filled, so a new system only
adds its own new texts to read. The key (which system wrote each row) is in ``<out>.key.json``.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from mbias.eval.reading import REFERENCE, read_labels, write_rows


def _engine(adapter: str):
    """The shipped engine kind (llama.cpp, or transformers without the extra) with ``adapter`` on the
    base it was trained on, and the prompt style it learned."""
    import importlib.util

    from mbias.config import gguf_spec, resolve
    from mbias.engines import load_engine
    from mbias.engines.packaged import adapter_base

    kind = "llamacpp" if importlib.util.find_spec("llama_cpp") else "hf"
    entry = resolve(gguf_spec(kind, gguf=adapter_base(adapter), adapter=adapter))
    return load_engine(entry.spec), entry.prompt_style


def rewrites(adapter: str, texts: list[str]) -> list[str]:
    """Greedy rewrites: the model alone."""
    from mbias.prompts import clean_output, render

    engine, style = _engine(adapter)
    outputs = engine.generate([render(t, style, engine.tokenizer) for t in texts], max_new_tokens=96)
    return [clean_output(o[0], t) for o, t in zip(outputs, texts)]


def product_rewrites(
    adapter: str, texts: list[str], retries: int, candidates: int = 1, judge: str = "embedded"
) -> list[str]:
    """What ``mbias debias --retries R --candidates N [--escalate ENGINE]`` returns: screened and
    verified by the judge; ``ADAPTER@ENGINE`` escalates the flagged ones to ENGINE."""
    from mbias.intervene import Debiaser, DebiasSettings
    from mbias.judges import load_judge

    adapter, _, escalate = adapter.partition("@")
    engine, style = _engine(adapter)
    settings = DebiasSettings(retries=retries, candidates=candidates, escalate=escalate or None)
    debiaser = Debiaser(engine, judge=load_judge(judge), prompt_style=style, settings=settings)
    return [r["rewrite"] for r in debiaser.debias(texts)]


def sheet(args: argparse.Namespace) -> None:
    from mbias.eval.dev import dev_splits

    _, texts, references = dev_splits(args.pool)[args.split]
    seen = {json.loads(line)["text"] for path in args.exclude for line in Path(path).read_text().splitlines()}
    fresh = [i for i, text in enumerate(texts) if text not in seen]
    picks = sorted(random.Random(args.seed).sample(fresh, min(args.n, len(fresh))))
    texts = [texts[i] for i in picks]
    systems = {REFERENCE: [references[i] for i in picks]} if references else {}
    for item in args.system:
        name, _, adapter = item.partition("=")
        systems[name] = rewrites(adapter, texts)
    products = {item.partition("=")[0] for item in args.product}
    asked = dict(c.partition("=")[::2] for c in args.candidates)
    judges = dict(j.partition("=")[::2] for j in args.judge)
    for option, named in (("--candidates", asked), ("--judge", judges)):
        if unknown := set(named) - products:
            raise SystemExit(f"{option} names no --product system: {', '.join(sorted(unknown))}")
    for item in args.product:
        name, _, adapter = item.partition("=")
        systems[name] = product_rewrites(
            adapter, texts, args.retries, int(asked.get(name, 1)), judges.get(name, "embedded")
        )
    rows: dict[tuple[str, str], list[str]] = {}
    for name, outputs in systems.items():
        for text, candidate in zip(texts, outputs):
            rows.setdefault((text, candidate), []).append(name)
    write_rows(rows, Path(args.out), split=args.split, n=len(texts), seed=args.seed, labels=args.labels)


def _share(values: list[int]) -> str:
    return f"{sum(values):>3}/{len(values):<3} = {100 * sum(values) / max(len(values), 1):5.1f} %"


def tally(args: argparse.Namespace) -> None:
    from sklearn.metrics import cohen_kappa_score

    from mbias.judges import load_judge

    path = Path(args.sheet)
    key_path = Path(f"{path}.key.json")
    if not key_path.is_file():  # a second reader's copy: give it as --second
        raise SystemExit(f"{path}: no {key_path.name} beside it; tally the sheet 'sheet' wrote")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    key = json.loads(key_path.read_text())
    missing = [i + 1 for i, row in enumerate(rows) if row.get("unsafe") not in (0, 1)]
    if missing:
        raise SystemExit(f"{path}: rows {missing[:10]} have no 0/1 'unsafe' label yet")
    second = read_labels(args.second)
    if args.second and (
        gaps := [i + 1 for i, r in enumerate(rows) if (r["text"], r["candidate"]) not in second]
    ):
        raise SystemExit(f"{path}: rows {gaps[:10]} have no label from the second reader")
    judge = load_judge("embedded")
    flagged = [int(judge.is_unsafe(s)) for s in judge.score([r["candidate"] for r in rows])]
    print(f"{key['split']}: {key['n']} held-out inputs, a blind read of {len(rows)} distinct rewrites")
    header = f"{'system':>12} {'still biased or toxic':>20} {'judge flags':>12} {'judge agrees':>13}"
    # a sheet whose reader also marked meaning_kept (0/1) on every row gets the faithfulness figures
    faithful = all(r.get("meaning_kept") in (0, 1) for r in rows)
    if faithful:
        header += f" {'meaning kept':>19} {'safe and kept':>19}"
    if second:
        header += f" {'2nd reader: unsafe':>20} {'meaning kept':>19}"
    print(header)
    for name in sorted({n for names in key["rows"] for n in names}):
        mine = [i for i, names in enumerate(key["rows"]) if name in names]
        line = (
            f"{name:>12} {_share([rows[i]['unsafe'] for i in mine])} "
            f"{100 * sum(flagged[i] for i in mine) / len(mine):10.1f} % "
            f"{100 * sum(rows[i]['unsafe'] == flagged[i] for i in mine) / len(mine):12.1f} %"
        )
        if faithful:
            kept = [rows[i]["meaning_kept"] for i in mine]
            both = [int(rows[i]["meaning_kept"] == 1 and rows[i]["unsafe"] == 0) for i in mine]
            line += f" {_share(kept)} {_share(both)}"
        if second:
            other = [second[(rows[i]["text"], rows[i]["candidate"])] for i in mine]
            line += f" {_share([o['unsafe'] for o in other])} {_share([o['meaning_kept'] for o in other])}"
        print(line)
    if second:
        first = [r["unsafe"] for r in rows]
        other = [second[(r["text"], r["candidate"])]["unsafe"] for r in rows]
        agree = sum(a == b for a, b in zip(first, other)) / len(rows)
        kappa = {
            name: cohen_kappa_score(a, b)
            for name, a, b in [
                ("readers", first, other),
                ("reader 1, judge", first, flagged),
                ("reader 2, judge", other, flagged),
            ]
        }
        print(
            f"readers agree on {100 * agree:.1f} % of the {len(rows)} rewrites; Cohen's kappa "
            + ", ".join(f"{name} {value:.2f}" for name, value in kappa.items())
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("sheet", help="write a blind sheet to label")
    make.add_argument("--split", default="bias-rewrite", help="a benchmarks/quality.py split")
    make.add_argument("--pool", type=int, default=300, help="quality.py's --limit: the pool sampled from")
    make.add_argument("--n", type=int, default=50, help="held-out inputs to sample from the pool")
    make.add_argument("--seed", type=int, default=1)
    make.add_argument("--system", action="append", default=[], help="NAME=ADAPTER_DIR (repeatable)")
    make.add_argument(
        "--product",
        action="append",
        default=[],
        help="NAME=ADAPTER_DIR, as debias runs it; NAME=ADAPTER_DIR@ENGINE with --escalate ENGINE",
    )
    make.add_argument("--retries", type=int, default=0, help="the --product systems' retries")
    make.add_argument(
        "--candidates", action="append", default=[], help="NAME=N: product NAME's candidates (default 1)"
    )
    make.add_argument("--judge", action="append", default=[], help="NAME=SPEC: product NAME's judge")
    make.add_argument(
        "--exclude", action="append", default=[], help="an earlier sheet whose inputs this one skips"
    )
    make.add_argument("--labels", action="append", default=[], help="earlier labelled sheets to reuse")
    make.add_argument("--out", required=True)
    count = commands.add_parser("tally", help="un-blind a labelled sheet")
    count.add_argument("sheet")
    count.add_argument(
        "--second", action="append", default=[], help="a second reader's labelled rows (unsafe, meaning_kept)"
    )
    args = parser.parse_args()
    sheet(args) if args.command == "sheet" else tally(args)


if __name__ == "__main__":
    main()
