"""What the suspect gate changes: the product path with the shipped judge (a suspect is rewritten only
when the harm-category head's top probability reaches its threshold) against the same judge with
that threshold at 0 (every suspect rewritten, as before), same engine, same process.

Held-out sets: the dev splits' biased texts and ToxiGen's neutral ones (300 per split at most), the
116 held-out assistant-voiced statements (docs/lab/judge-v4), the long-answer benchmark's biased
sentences and its clean sentences, and 1,200 plain LLM prose sentences no shipped model trained on
(docs/lab/judge-v3, judge-v4). Writes each set's outputs to OUT/<set>.json and one paired blind
sheet (benchmarks/human_read.py format) of the texts the gate decides (suspects whose category the
head is unsure of) that one system hands back unchanged and the other rewrites: OUT/gate.jsonl.
Every other difference is llama.cpp's batch noise (the two systems batch different units), which
also makes the model copy a flagged text in one run and not in the other.

    python docs/lab/suspect_gate.py --out runs/gate
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

from mbias import config
from mbias.engines import load_engine
from mbias.eval.answers import build
from mbias.eval.dev import dev_splits, repo_path
from mbias.eval.reading import write_rows
from mbias.intervene import Debiaser, DebiasSettings
from mbias.judges.embedded import EmbeddedJudge
from mbias.segment import pieces
from mbias.splits import is_heldout

sys.path.insert(0, str(repo_path("benchmarks")))
from long_answers import changed_ranges, overlaps, what_became  # noqa: E402


def texts_of(name: str) -> list[str]:
    lab = repo_path("docs", "lab")
    if name == "statements":
        rows = [json.loads(line) for f in "abc" for line in (lab / f"judge-v4/statements-{f}.jsonl").open()]
        return [r["biased_text"] for r in rows if is_heldout(r["biased_text"])]
    files = (lab / "judge-v3/prose-negatives.jsonl", lab / "judge-v4/prose-broad.jsonl")
    return [json.loads(line)["text"] for f in files for line in f.open()]


def decided_by_gate(judge: EmbeddedJudge, text: str) -> bool:
    """Whether the gate keeps ``text`` from the rewriter: nothing in it over a threshold, and what
    the margin catches (the text or its pieces) resembles no harm clearly."""
    parts = [text] + [text[a:b] for a, b in pieces(text)]
    scores = judge.score(parts)
    if any(judge.is_unsafe(s) for s in scores):
        return False
    mild = [p for p, s in zip(parts, scores) if judge.is_unsafe(s, margin=DebiasSettings().screen_band)]
    return bool(mild) and not any(judge.resembles_harm(mild))


def long_answer_sentences(debiaser: Debiaser) -> tuple[list[str], list[str]]:
    """(text, what it became) for every biased sentence, then every clean sentence some system
    changed, of the long-answer set."""
    answers = build(0)
    records = debiaser.debias([{"id": a.id, "text": a.markdown} for a in answers])
    pairs = []
    for answer, record in zip(answers, records):
        for place in answer.sentences:
            clean = place not in answer.biased
            if not clean or overlaps(place, changed_ranges(record)):
                pairs.append((answer.markdown[place[0] : place[1]], what_became(answer, record, place)))
    return [p[0] for p in pairs], [p[1] for p in pairs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    out = Path(parser.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)
    engine = load_engine(config.resolve("mbias-270m").spec)
    gate = EmbeddedJudge()
    heads = copy.deepcopy(gate.heads)
    heads.category.threshold = 0.0
    systems = {
        "gate": Debiaser(engine, judge=gate),
        "nogate": Debiaser(engine, judge=EmbeddedJudge(heads=heads)),
    }
    sets = {n: t for n, (kind, t, _) in dev_splits(300).items() if kind == "biased" or n == "toxigen-clean"}
    sets.update(statements=texts_of("statements"), prose=texts_of("prose"), long_answers=None)
    sheet: dict[tuple[str, str], list[str]] = {}
    for name, texts in sets.items():
        outputs, seconds = {}, {}
        for system, debiaser in systems.items():
            start = time.perf_counter()
            if texts is None:  # the same sentences in both: keep those either system changed
                source, outputs[system] = long_answer_sentences(debiaser)
                outputs[system] = dict(zip(source, outputs[system]))
            else:
                outputs[system] = [r["rewrite"] for r in debiaser.debias(list(texts))]
            seconds[system] = round(time.perf_counter() - start, 1)
        if texts is None:
            texts = sorted(set(outputs["gate"]) | set(outputs["nogate"]))
            outputs = {s: [o.get(t, t) for t in texts] for s, o in outputs.items()}
        differ = [i for i, t in enumerate(texts) if outputs["gate"][i] != outputs["nogate"][i]]
        copied = {s: [i for i in differ if outputs[s][i] == texts[i]] for s in outputs}
        changed = {s: sum(o != t for o, t in zip(outputs[s], texts)) for s in outputs}
        print(
            f"{name}: {len(texts)} texts, changed {changed}, differ {len(differ)}, handed back unchanged "
            f"by one system { ({s: len(c) for s, c in copied.items()}) }, seconds {seconds}"
        )
        (out / f"{name}.json").write_text(json.dumps({"texts": texts, **outputs}, ensure_ascii=False))
        for i in [i for i in copied["gate"] + copied["nogate"] if decided_by_gate(gate, texts[i])]:
            for system in outputs:
                sheet.setdefault((texts[i], outputs[system][i]), []).append(system)
    write_rows(sheet, out / "gate.jsonl", split="suspect-gate", n=len(sheet) // 2, seed=7)


if __name__ == "__main__":
    main()
