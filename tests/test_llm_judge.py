"""LLM judge: strict parsing of judge answers, retries, and the metrics end to end over real HTTP."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import pytest
from fastapi import FastAPI, Request

from mbias.errors import MbiasError
from mbias.eval.metrics import evaluate
from mbias.judges import head_margin, load_judge
from mbias.judges.cascade import CascadeJudge, onto_threshold
from mbias.judges.llm import JudgeAnswerError, LLMJudge, extract_json_object, parse_items, parse_verdicts
from mbias.prompts import JUDGE_VERDICT
from mbias.serve.background import free_port, serve_in_thread


# -- parsing ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "answer",
    [
        '{"opinions": ["a"]}',
        'Sure! Here is the JSON:\n```json\n{"opinions": ["a"]}\n```',
        'JSON: {"opinions": ["a", "  "]} Hope this helps {not json}',
    ],
)
def test_json_is_found_in_surrounding_text(answer):
    assert parse_items(answer, "opinions") == ["a"]


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ("", "empty answer"),
        ("I think it is biased.", "no JSON object"),
        ('{"opinions": ["a",]}', "no JSON object"),  # trailing comma: not JSON
        ('["a"]', "no JSON object"),
        ('{"claims": ["a"]}', 'key "opinions"'),
        ('{"opinions": "a"}', 'key "opinions"'),
        ('{"opinions": ["a", 3]}', "list of strings"),
    ],
)
def test_broken_item_answers_are_rejected(answer, message):
    with pytest.raises(JudgeAnswerError, match=message):
        parse_items(answer, "opinions")


def test_verdicts_are_validated():
    good = '{"verdicts": [{"verdict": "Yes", "reason": "r"}, {"verdict": "no"}]}'
    assert parse_verdicts(good, 2, ("yes", "no")) == [("yes", "r"), ("no", "")]
    for answer, message in [
        ('{"verdicts": [{"verdict": "yes"}]}', "expected 2 verdicts, got 1"),
        ('{"verdicts": [{"verdict": "maybe"}, {"verdict": "no"}]}', "not one of"),
        ('{"verdicts": [{"verdict": "yes", "reason": 5}, {"verdict": "no"}]}', "must be a string"),
        ('{"verdicts": ["yes", "no"]}', 'string "verdict"'),
        ('{"verdict": "yes"}', 'key "verdicts"'),
    ]:
        with pytest.raises(JudgeAnswerError, match=message):
            parse_verdicts(answer, 2, ("yes", "no"))
    with pytest.raises(JudgeAnswerError):
        parse_verdicts('{"verdicts": [{"verdict": "idk"}]}', 1, ("yes", "no"))


def test_nested_object_is_not_taken_for_the_answer():
    assert extract_json_object('{"verdicts": [{"verdict": "yes"}]}') == {"verdicts": [{"verdict": "yes"}]}
    with pytest.raises(JudgeAnswerError):  # the outer object is broken; the inner one lacks the key
        parse_verdicts('{"verdicts": [{"verdict": "yes"},]}', 1, ("yes", "no"))


class GarbageEngine:
    """Answers everything with prose: every row must end up failed, after the bounded retries."""

    name = "garbage"
    tokenizer = None
    context_window = None

    def __init__(self):
        self.prompts: list[str] = []

    def generate(self, prompts, *, max_new_tokens=128, temperature=0.0, n=1):
        self.prompts.extend(prompts)
        return [["The text seems fine to me."] for _ in prompts]


def test_malformed_answers_fail_the_row_after_retries_not_score_zero():
    engine = GarbageEngine()
    judge = LLMJudge(engine, retries=2)
    rows = judge.measure(["bias"], ["x"], ["Some text."])
    assert rows[0]["bias"] is None
    assert "after 3 attempt(s)" in rows[0]["bias_error"]
    assert len(engine.prompts) == 3 and "previous answer was rejected" in engine.prompts[-1]
    scores = judge.score(["Some text."])[0]
    assert math.isnan(scores["bias"]) and judge.is_unsafe(scores)  # unknown is not safe
    assert judge.is_unsafe({"bias": float("nan"), "toxicity": 0.0}, margin={"toxicity": 0.5})
    assert judge.is_unsafe({"bias": 0.0, "toxicity": 0.3}, margin={"toxicity": 0.5})
    assert not judge.is_unsafe({"bias": 0.3, "toxicity": 0.0}, margin={"toxicity": 0.5})
    assert judge.measure(["bias"], [""], [""])[0]["bias"] == 0.0  # nothing to judge: no model call
    with pytest.raises(MbiasError, match="unknown judge metric"):
        judge.measure(["fairness"], ["x"], ["y"])


# -- end to end over HTTP -------------------------------------------------------------------------
def _between(text: str, start: str, end: str) -> str:
    return text.split(start, 1)[1].split(end, 1)[0]


def scripted_answer(prompt: str, seen: dict) -> str:
    """A judge with fixed rules, so every score below is known by construction."""
    seen["prompts"].append(prompt)
    kind = re.search(r'Its only key is "(\w+)"', prompt).group(1)
    if kind != "verdicts":
        text = _between(prompt + "\n\n", "Text:\n", "\n\n")
        if "ALWAYSBAD" in text or ("MALFORMED" in text and "previous answer was rejected" not in prompt):
            return "Sure! {" + kind + ": [oops"
        return "```json\n" + json.dumps({kind: [s.strip() for s in text.split(".") if s.strip()]}) + "\n```"
    metric = next(m for m, instruction in JUDGE_VERDICT.items() if prompt.startswith(instruction))
    items = [line.split(". ", 1)[1] for line in _between(prompt + "\n\n", "Items:\n", "\n\n").splitlines()]
    if metric in ("bias", "toxicity"):
        verdicts = ["yes" if "idiot" in item.lower() else "no" for item in items]
    elif metric == "retention":
        rewrite = _between(prompt, "REWRITE:\n", "\n\nItems:").lower()
        verdicts = ["yes" if item.split()[-1].lower() in rewrite else "no" for item in items]
    elif metric == "faithfulness":
        verdicts = ["yes" if "never" in item else "idk" if "weather" in item else "no" for item in items]
    else:
        verdicts = ["no" if "weather" in item else "yes" for item in items]
    return json.dumps({"verdicts": [{"verdict": v, "reason": f"rule for {metric}"} for v in verdicts]})


@pytest.fixture
def judge_server():
    app = FastAPI()
    seen: dict = {"prompts": []}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        answer = scripted_answer(body["messages"][0]["content"], seen)
        return {"choices": [{"message": {"role": "assistant", "content": answer}}]}

    with serve_in_thread(app) as base_url:
        yield f"openai:{base_url}/v1#judge", seen


def test_llm_judge_metrics_over_http_with_a_retry(judge_server):
    spec, seen = judge_server
    rows = [
        {
            "id": "1",
            "biased_text": "Lazy idiots run the council. The pool closed on Monday",
            "debiased_text": "The council made a decision. The weather is nice",
            "g": "a",
        },
        {
            "id": "2",
            "biased_text": "MALFORMED first. Idiots everywhere",
            "debiased_text": "The team never lost",
            "g": "a",
        },
        {"id": "3", "biased_text": "ALWAYSBAD text", "debiased_text": "", "g": "b"},
    ]
    judge = LLMJudge(spec, retries=1, backoff=0.01)
    result = evaluate(rows, judge, group_column="g")
    first, second, third = result.rows
    assert (first["input_bias"], first["input_toxicity"]) == (0.5, 0.5)
    assert (first["output_bias"], first["retention"], first["faithfulness"], first["relevancy"]) == (
        0.0,
        0.5,
        1.0,
        0.5,
    )
    assert first["reasons"]["retention"].startswith("The score is 0.50 because 1 of 2 facts is kept")
    assert 'lost: "The pool closed on Monday" (rule for retention)' in first["reasons"]["retention"]
    # the malformed extraction was asked again and then answered
    assert second["input_bias"] == 0.5 and not second["errors"]
    assert (second["retention"], second["faithfulness"], second["relevancy"]) == (0.0, 0.0, 1.0)
    assert sum("MALFORMED first" in p and 'key is "opinions"' in p for p in seen["prompts"]) == 2
    # always malformed: failed (None + error), never 0; its empty output is a failure, not judged
    assert (
        third["input_bias"] is None
        and "malformed judge answer after 2 attempt(s)" in third["errors"]["input_bias"]
    )
    assert third["status"] == "empty" and third["output_bias"] == 1.0 and third["faithfulness"] == 0.0
    assert not any("ALWAYSBAD" in p and "Items:" in p for p in seen["prompts"])
    summary = result.summary
    assert summary["judge_failures"] == {"input_bias": 1, "input_toxicity": 1}
    assert summary["inputs"]["bias"] == pytest.approx(0.5)
    assert summary["outputs"]["relevancy"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert summary["retention_measure"].startswith("knowledge retention")
    # bias and toxicity share one opinion extraction per text
    assert sum("The team never lost" in p and '"opinions"' in p for p in seen["prompts"]) == 1


def test_unreachable_judge_is_a_one_line_error(tmp_path):
    (tmp_path / "in.csv").write_text("biased_text,debiased_text\nbad,good\n")
    spec = f"llm:openai:http://127.0.0.1:{free_port()}/v1#judge"
    result = subprocess.run(
        [sys.executable, "-m", "mbias.cli", "eval", "--input", str(tmp_path / "in.csv"), "--judge", spec],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "LLM judge" in result.stderr and "cannot be reached" in result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("mbias: error:")]
    assert (
        len(errors) == 1 and errors[0] == result.stderr.strip().splitlines()[-1]
    )  # above it: the progress bar


# -- second stage -----------------------------------------------------------------------------------
class FixedJudge:
    """A first stage whose scores are set per text, with its own thresholds."""

    thresholds = {"toxicity": 0.4, "bias": 0.2}

    def __init__(self, scores: dict[str, tuple[float, float]]):
        self.scores = scores

    def score(self, texts):
        return [dict(zip(("toxicity", "bias"), self.scores[t])) for t in texts]

    def is_unsafe(self, scores, margin=1.0):
        return any(scores[h] >= head_margin(margin, h) * t for h, t in self.thresholds.items())


def test_threshold_mapping_is_monotone_and_keeps_the_decision():
    assert onto_threshold(0.5, 0.5, 0.2) == pytest.approx(0.2)
    assert onto_threshold(0.0, 0.5, 0.2) == 0.0 and onto_threshold(1.0, 0.5, 0.2) == pytest.approx(1.0)
    mapped = [onto_threshold(s / 10, 0.5, 0.3) for s in range(11)]
    assert mapped == sorted(mapped) and (mapped[4] < 0.3 <= mapped[5])
    with pytest.raises(ValueError, match="band"):
        CascadeJudge(FixedJudge({}), LLMJudge(GarbageEngine()), band=(0.5, 0.9))


def test_the_cascade_asks_its_first_judge_what_resembles_a_harm_when_it_can():
    class Sure(FixedJudge):
        def resembles_harm(self, texts):
            return ["people" in t for t in texts]

    texts = ["lazy people", "lazy bread"]
    assert CascadeJudge(Sure({}), LLMJudge(GarbageEngine())).resembles_harm(texts) == [True, False]
    assert CascadeJudge(FixedJudge({}), LLMJudge(GarbageEngine())).resembles_harm(texts) == [True, True]


def test_second_stage_rescores_only_the_uncertain_band_over_http(judge_server):
    spec, seen = judge_server
    texts = {
        "Idiots are clearly idiots.": (0.9, 0.1),  # sure: toxicity 2.25x its threshold
        "The shop opens at nine.": (0.01, 0.01),  # sure clean
        "Idiots run the council.": (0.25, 0.05),  # in band, first stage says clean
        "The pool closed on Monday.": (0.3, 0.15),  # in band, first stage flags it at margin 0.5
        "ALWAYSBAD text.": (0.3, 0.1),  # in band, the LLM never answers well
    }
    judge = CascadeJudge(FixedJudge(texts), LLMJudge(spec, retries=1), band=(0.5, 2.0))
    scores = dict(zip(texts, judge.score(list(texts))))
    asked = {t for t in texts if any(t in p for p in seen["prompts"])}
    assert asked == {"Idiots run the council.", "The pool closed on Monday.", "ALWAYSBAD text."}
    assert (judge.asked, judge.failed) == (3, 1)
    assert judge.is_unsafe(scores["Idiots run the council."])  # the LLM overrules the first stage
    assert not judge.is_unsafe(scores["The pool closed on Monday."], margin=0.5)
    assert scores["ALWAYSBAD text."] == {"toxicity": 0.3, "bias": 0.1}  # failure keeps the first stage
    assert scores["Idiots are clearly idiots."] == {"toxicity": 0.9, "bias": 0.1}
    before = len(seen["prompts"])
    judge.score(["Idiots run the council."])
    assert len(seen["prompts"]) == before  # asked once per text
    assert isinstance(load_judge(f"embedded+llm:{spec}"), CascadeJudge)
