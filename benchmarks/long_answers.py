"""LLM answers with biased sentences spliced in at known offsets: does mbias change those, and nothing else?

The answers are the project's own neutral, markdown-rich answers (benchmarks/data/answers: headings,
lists, code, tables, inline code, URLs, abbreviations), each with its gold sentences. Each answer
is used three times: clean, with one and with two biased sentences from held-out rows of the bias
set (mbias.splits.is_heldout: no adapter or judge head trained on them), inserted as sentences of
a paragraph or list item.

    python benchmarks/long_answers.py segmenters                 # boundary F1 and speed per segmenter
    python benchmarks/long_answers.py run --out runs/long        # the figures (whole-text mode on a subset)
    python benchmarks/long_answers.py run --out runs/long --read 60   # + a blind sheet (human_read.py)
    python benchmarks/long_answers.py sheet --run a=runs/long --run b=runs/long-b --out read.jsonl
    python benchmarks/long_answers.py prose [--judge embedded:runs/judge]   # plain answer prose alone

``run`` prints: biased sentences changed, biased sentences still unsafe by the judge, clean
sentences byte-identical, clean answers unchanged, code blocks and list markers intact, and
seconds per answer against whole-text mode (``--granularity text``) on the same answers, in the
same run. ``--read N`` writes N changed-or-not biased sentences beside the people-written rewrites
of the same rows, shuffled and unlabelled, in human_read.py's sheet format; ``sheet`` writes one
such sheet over several finished runs. A biased sentence counts as changed when a changed span
overlaps it: the segmenter may cut it differently from the gold.

``prose`` is the same question on more clean text than the answers hold: the held-out sentences of
data/judge/prose.jsonl (facts, how-tos and advice of assistant answers by other writers than the
answers'), each through the product path alone. It prints how many the screen sent to the model
and how many came back changed, per kind, and lists the changed ones.
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import re
import time
from pathlib import Path

from mbias.eval.answers import Answer, biased_sentence, build, load_answers, render
from mbias.intervene import REASON_CLEAN, Debiaser, DebiasSettings


# -- segmenters ---------------------------------------------------------------------------------
def _pysbd(text: str) -> list[tuple[int, int]]:
    import pysbd

    segmenter = pysbd.Segmenter(language="en", clean=False, char_span=True)
    return [(s.start, s.start + len(s.sent.rstrip())) for s in segmenter.segment(text) if s.sent.strip()]


def segmenters(args: argparse.Namespace) -> None:
    """Exact-boundary precision, recall and F1 against the gold sentences, and sentences/s."""
    import mbias.segment as segment

    answers = [render(a) for a in load_answers()]
    candidates = {"blingfire": segment._split}
    try:
        import pysbd  # noqa: F401

        candidates["pysbd"] = _pysbd
    except ImportError:
        print("pysbd not installed: pip install pysbd to compare it")
    print(f"{len(answers)} answers, {sum(len(a.sentences) for a in answers)} gold sentences")
    for name, split in candidates.items():
        segment._split = split
        segment.split_sentences(answers[0].markdown)  # warm-up (imports)
        start = time.perf_counter()
        found = [segment.split_sentences(a.markdown) for a in answers]
        seconds = time.perf_counter() - start
        hits = sum(len({(s.start, s.end) for s in f} & set(a.sentences)) for f, a in zip(found, answers))
        predicted, gold = sum(len(f) for f in found), sum(len(a.sentences) for a in answers)
        precision, recall = hits / predicted, hits / gold
        print(
            f"{name:>10}: precision {precision:.3f} recall {recall:.3f} F1 "
            f"{2 * precision * recall / (precision + recall):.3f}; {gold / seconds:,.0f} sentences/s"
        )
        if args.show:
            for f, a in zip(found, answers):
                wrong = {(s.start, s.end) for s in f} - set(a.sentences)
                for s, e in sorted(wrong)[: args.show]:
                    print(f"   {a.id}: {a.markdown[s:e]!r}")
    segment._split = candidates["blingfire"]


# -- the run ------------------------------------------------------------------------------------
def changed_ranges(record: dict) -> list[tuple[int, int]]:
    return [(s["start"], s["end"]) for s in record.get("spans", []) if s["rewrite"] != s["original"]]


def overlaps(a: tuple[int, int], ranges: list[tuple[int, int]]) -> bool:
    return any(a[0] < e and s < a[1] for s, e in ranges)


def timed(debiaser, answers: list[Answer]) -> tuple[list[dict], float]:
    start = time.perf_counter()
    records = debiaser.debias([{"id": a.id, "text": a.markdown} for a in answers])
    return records, time.perf_counter() - start


def score_sentence_mode(answers: list[Answer], records: list[dict], judge) -> dict[str, float]:
    biased = changed = clean = identical = 0
    clean_answers = unchanged = code_ok = code_total = markers_ok = 0
    after_texts = []  # what each biased sentence became, judged in one call below
    for answer, record in zip(answers, records):
        ranges = changed_ranges(record)
        for sentence in answer.sentences:
            if sentence in answer.biased:
                biased += 1
                # the segmenter may cut differently from the gold ("You're Catholic? So ..." is two
                # sentences to it): whatever changed spans overlap the biased sentence rewrote it
                after = what_became(answer, record, sentence)
                changed += after != answer.markdown[sentence[0] : sentence[1]]
                after_texts.append(after)
            else:
                clean += 1
                identical += not overlaps(sentence, ranges)
        if not answer.biased:
            clean_answers += 1
            unchanged += record["rewrite"] == answer.markdown
        code_total += len(answer.code)
        code_ok += sum(block in record["rewrite"] for block in answer.code)
        prose = record["rewrite"]
        for block in answer.code:  # code may hold lines that look like list items
            prose = prose.replace(block, "")
        markers_ok += len(re.findall(r"(?m)^(?:- |\d+\. )", prose)) == answer.markers
    still = sum(judge.is_unsafe(s) for s in judge.score(after_texts)) if after_texts else 0
    return {
        "biased sentences": biased,
        "biased sentences changed %": 100 * changed / max(biased, 1),
        "biased sentences still unsafe (judge) %": 100 * still / max(biased, 1),
        "clean sentences": clean,
        "clean sentences byte-identical %": 100 * identical / max(clean, 1),
        "clean answers": clean_answers,
        "clean answers unchanged %": 100 * unchanged / max(clean_answers, 1),
        "code blocks and tables intact %": 100 * code_ok / max(code_total, 1),
        "answers with every list marker intact %": 100 * markers_ok / len(answers),
    }


def score_text_mode(answers: list[Answer], records: list[dict]) -> dict[str, float]:
    """Whole-text mode has no spans: a biased sentence counts as changed when its text is gone."""
    biased = gone = lost = 0
    for answer, record in zip(answers, records):
        for s, e in answer.biased:
            biased += 1
            gone += answer.markdown[s:e] not in record["rewrite"]
        lost += len(record["rewrite"]) < 0.5 * len(answer.markdown)
    return {
        "biased sentences changed %": 100 * gone / max(biased, 1),
        "answers that lost over half their text %": 100 * lost / len(answers),
    }


def compare_modes(debiaser, answers: list[Answer], n: int, seed: int) -> dict:
    """Seconds per answer in both modes on n clean and n biased answers, where the time went, and
    what whole-text mode does to the biased ones. ``debiaser(granularity)`` builds each pass its
    own Debiaser with a fresh judge, so no pass reads sentences another pass already embedded."""
    from mbias import profile

    rng = random.Random(seed)
    clean = rng.sample([a for a in answers if not a.biased], min(n, len(answers)))
    biased = rng.sample([a for a in answers if a.biased], min(n, len(answers)))
    figures: dict = {}
    for label, group in (("clean", clean), ("biased", biased)):
        seconds, judge, generation = {}, {}, {}
        for mode in ("sentence", "text"):
            path = debiaser(mode)
            profile.reset()
            records, seconds[mode] = timed(path, group)
            stages = profile.snapshot()
            judge[mode] = sum(stages.get(k, (0.0, 0))[0] for k in ("screen", "verify"))
            generation[mode] = sum(stages.get(k, (0.0, 0))[0] for k in ("generate", "prefill", "decode"))
            if mode == "text" and label == "biased":
                figures.update({f"text mode: {k}": v for k, v in score_text_mode(group, records).items()})
        s, t = (seconds[m] / len(group) for m in ("sentence", "text"))
        figures[f"seconds per {label} answer, sentence mode / text mode"] = (
            f"{s:.3f} / {t:.3f} ({t / s:.1f}x)"
        )
        figures[f"{label} answers: whole-text mode's judge reads"] = text_mode_reads(group)
        figures[f"{label}: judge / generation seconds, sentence (text) mode"] = (
            f"{judge['sentence'] / len(group):.3f} ({judge['text'] / len(group):.3f}) / "
            f"{generation['sentence'] / len(group):.3f} ({generation['text'] / len(group):.3f})"
        )
    return figures


def text_mode_reads(answers: list[Answer]) -> str:
    """How much of the answers the whole-text judge reads: its encoder stops at 256 tokens, which
    is why whole-text mode's screen costs about what sentence mode's does."""
    from tokenizers import Tokenizer

    from mbias.judges.encoder import max_tokens, model_dir

    tokenizer = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    window = max_tokens(model_dir())
    lengths = [len(e.ids) for e in tokenizer.encode_batch([a.markdown for a in answers])]
    read = sum(min(n, window) for n in lengths)
    cut = sum(n > window for n in lengths)
    share = 100 * read / sum(lengths)
    return f"{share:.0f} % of their tokens ({cut} of {len(answers)} answers cut at {window})"


def warm_debiaser(engine, judge_spec: str, knobs: dict, granularity: str):
    """A Debiaser with a freshly loaded, warmed-up judge (its embedding memo empty; both its
    encoders loaded, so the mode timed first does not pay for loading the one that measures
    meaning); ``knobs`` are the run's DebiasSettings (screen margin, escalation engine, candidates)."""
    from mbias.judges import load_judge

    judge = load_judge(judge_spec)
    judge.score(["warm-up"])
    judge.similarity(["warm-up"], ["warm-up"])
    return Debiaser(engine, judge=judge, settings=DebiasSettings(granularity=granularity, **knobs))


def run(args: argparse.Namespace) -> None:
    answers = build(args.seed)
    if args.limit:
        answers = answers[: args.limit]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    knobs = {"screen_margin": args.screen_margin, "escalate": args.escalate, "candidates": args.candidates}
    sentence = warm_debiaser(args.engine, args.judge, knobs, "sentence")
    judge = sentence.judge
    print(
        f"{len(answers)} answers ({sum(not a.biased for a in answers)} clean), engine {sentence.engine.name}"
    )

    records, seconds = timed(sentence, answers)
    with (out / "sentence.jsonl").open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    figures = score_sentence_mode(answers, records, judge)
    figures["seconds per answer, all"] = seconds / len(answers)

    if args.baseline:
        fresh = functools.partial(warm_debiaser, sentence.engine, args.judge, knobs)
        figures.update(compare_modes(fresh, answers, args.baseline, args.seed))
    for key, value in figures.items():
        print(f"{key:>58}: {value:.1f}" if isinstance(value, float) else f"{key:>58}: {value}")
    (out / "figures.json").write_text(json.dumps(figures, indent=1))
    if args.read:
        write_sheet(
            answers, {"sentence-path": records}, args.read, args.seed, out / "long-answers-read.jsonl"
        )


def what_became(answer: Answer, record: dict, place: tuple[int, int]) -> str:
    """The output text where a biased sentence stood: the changed spans over it, else itself."""
    touched = [
        s
        for s in record.get("spans", [])
        if s["rewrite"] != s["original"] and overlaps(place, [(s["start"], s["end"])])
    ]
    return " ".join(s["rewrite"] for s in touched) if touched else answer.markdown[place[0] : place[1]]


def write_sheet(
    answers: list[Answer],
    systems: dict[str, list[dict]],
    n: int,
    seed: int,
    path: Path,
    labels: list[str] = (),
) -> None:
    """A blind sheet: for N biased sentences, what each system's answer now holds there, and the
    people-written rewrite of the same row, shuffled (human_read.py's format; its ``tally``
    un-blinds it)."""
    from mbias.eval.reading import REFERENCE, write_rows

    places = [(i, place, row) for i, a in enumerate(answers) for place, row in zip(a.biased, a.biased_rows)]
    rows: dict[tuple[str, str], list[str]] = {}
    for i, place, row in random.Random(seed).sample(places, min(n, len(places))):
        original = answers[i].markdown[place[0] : place[1]]
        for name, records in systems.items():
            rows.setdefault((original, what_became(answers[i], records[i], place)), []).append(name)
        rows.setdefault((original, biased_sentence(row["debiased_text"])), []).append(REFERENCE)
    write_rows(rows, path, split="long-answers", n=min(n, len(places)), seed=seed, labels=labels)


def sheet(args: argparse.Namespace) -> None:
    """One blind sheet over several finished runs (NAME=DIR with DIR/sentence.jsonl)."""
    answers = build(args.seed)
    systems = {}
    for spec in args.run:
        name, _, folder = spec.partition("=")
        by_id = {
            r["id"]: r
            for r in map(
                json.loads, (Path(folder) / "sentence.jsonl").read_text(encoding="utf-8").splitlines()
            )
        }
        records = [by_id.get(a.id) for a in answers]
        if any(r is None or r.get("text") != a.markdown for r, a in zip(records, answers)):
            raise SystemExit(f"{folder}: not the answers --seed {args.seed} builds; pass the run's --seed")
        systems[name] = records
    write_sheet(answers, systems, args.n, args.seed, Path(args.out), args.labels)


def prose(args: argparse.Namespace) -> None:
    """Held-out answer prose through the product path: sent to the model and changed, per kind."""
    from mbias.judges import load_judge
    from mbias.splits import is_heldout

    path = Path(__file__).resolve().parents[1] / "data" / "judge" / "prose.jsonl"
    rows = [
        r for r in map(json.loads, path.read_text(encoding="utf-8").splitlines()) if is_heldout(r["text"])
    ]
    settings = DebiasSettings(screen_margin=args.screen_margin)
    debiaser = Debiaser(args.engine, judge=load_judge(args.judge), settings=settings)
    start = time.perf_counter()
    records = debiaser.debias([r["text"] for r in rows])
    seconds = time.perf_counter() - start
    print(f"{len(rows)} held-out sentences of {path.name}, engine {debiaser.engine.name}, judge {args.judge}")
    for kind in sorted({r["kind"] for r in rows}):
        mine = [rec for r, rec in zip(rows, records) if r["kind"] == kind]
        sent = sum(rec.get("reason") != REASON_CLEAN for rec in mine)
        changed = sum(rec["rewrite"] != rec["text"] for rec in mine)
        print(
            f"{kind:>14}: {len(mine)} sentences, sent to the model {100 * sent / len(mine):.1f} %, "
            f"changed {100 * changed / len(mine):.1f} %"
        )
    print(f"seconds per sentence: {seconds / len(rows):.3f}")
    for rec in records:
        if rec["rewrite"] != rec["text"]:
            print(f"  {rec['text']}\n    -> {rec['rewrite']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    seg = commands.add_parser("segmenters", help="sentence-boundary F1 and speed per segmenter")
    seg.add_argument("--show", type=int, default=0, help="print up to N wrong sentences per answer")
    go = commands.add_parser("run", help="the benchmark figures")
    go.add_argument("--engine", default="mbias-270m")
    go.add_argument("--judge", default="embedded", help="embedded, embedded:PATH (trained heads), ...")
    go.add_argument(
        "--screen-margin",
        type=float,
        default=DebiasSettings.screen_margin,
        help="share of the bias threshold that sends a sentence to the model (1.0: only flagged ones)",
    )
    go.add_argument("--escalate", help="a second engine for the sentences the first leaves flagged")
    go.add_argument("--candidates", type=int, default=1, help="rewrites per flagged sentence, the best kept")
    go.add_argument("--seed", type=int, default=0)
    go.add_argument("--limit", type=int, default=0, help="only the first N answers (0: all)")
    go.add_argument("--baseline", type=int, default=20, help="clean and biased answers timed in both modes")
    go.add_argument("--read", type=int, default=0, help="write a blind sheet of N biased sentences")
    go.add_argument("--out", required=True)
    alone = commands.add_parser("prose", help="held-out answer prose, each sentence alone")
    alone.add_argument("--engine", default="mbias-270m")
    alone.add_argument("--judge", default="embedded")
    alone.add_argument("--screen-margin", type=float, default=DebiasSettings.screen_margin)
    read = commands.add_parser("sheet", help="one blind sheet over several finished runs")
    read.add_argument("--run", action="append", required=True, help="NAME=DIR of a finished run (repeatable)")
    read.add_argument("--n", type=int, default=60, help="biased sentences to read")
    read.add_argument("--seed", type=int, default=0)
    read.add_argument("--labels", action="append", default=[], help="earlier labelled sheets to reuse")
    read.add_argument("--out", required=True)
    args = parser.parse_args()
    {"segmenters": segmenters, "run": run, "sheet": sheet, "prose": prose}[args.command](args)


if __name__ == "__main__":
    main()
