"""The sentence-level path: segmentation with exact offsets, screening per sentence, splicing, spans."""

from __future__ import annotations

import json

import pytest

from mbias.intervene import Debiaser, DebiasSettings, fit_to_sentence
from mbias.segment import context_of, pieces, splice, split_sentences
from tests.doubles import FixedJudge, ScriptedEngine

ANSWER = """## Hiring tips

Dr. Smith runs the U.S. office, e.g. the team in Austin. Write a clear job ad. Older staff are idiots with
new tools, so hire someone young. Interview every candidate with the same questions!

1. Use `pip install rubric` for scoring, i.e. a shared sheet.
2. Read https://example.org/guide.html before you start
- Keep notes short

```python
def score(candidate):
    return candidate.idiot_score  # an idiot in code is never touched
```

| Step | Owner |
| --- | --- |
| Screen idiot CVs | HR |

> Hiring well takes time.
"""


def texts(answer: str) -> list[str]:
    return [s.text for s in split_sentences(answer)]


def parts(sentence: str) -> list[str]:
    return [sentence[a:b] for a, b in pieces(sentence)]


def test_offsets_are_exact_and_markdown_stays_out():
    sentences = split_sentences(ANSWER)
    for s in sentences:
        assert ANSWER[s.start : s.end] == s.text
    assert texts(ANSWER) == [
        "Hiring tips",
        "Dr. Smith runs the U.S. office, e.g. the team in Austin.",
        "Write a clear job ad.",
        "Older staff are idiots with\nnew tools, so hire someone young.",
        "Interview every candidate with the same questions!",
        "Use `pip install rubric` for scoring, i.e. a shared sheet.",
        "Read https://example.org/guide.html before you start",
        "Keep notes short",
        "Hiring well takes time.",
    ]
    protected = {s.text: s.rewritable for s in sentences}
    assert protected["Use `pip install rubric` for scoring, i.e. a shared sheet."] is False
    assert protected["Read https://example.org/guide.html before you start"] is False
    assert protected["Write a clear job ad."] is True


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("No final punctuation here", ["No final punctuation here"]),
        ('She said "it works." Then she left.', ['She said "it works."', "Then she left."]),
        ("Version 3.11 is out. It costs $4.50 a month.", ["Version 3.11 is out.", "It costs $4.50 a month."]),
        ("First paragraph.\n\nSecond one.\n", ["First paragraph.", "Second one."]),
        ("   \n\n", []),
        ("```\nonly code. here.\n```", []),
        ("- **Title:** use a plain title. Keep it short.", ["use a plain title.", "Keep it short."]),
        ("*Note*: back up first.", ["back up first."]),
        ("**Eid** (Muslim): dates move.", ["**Eid** (Muslim): dates move."]),  # emphasis, not a label
        ("**Only a label:**", ["**Only a label:**"]),
    ],
)
def test_sentence_boundaries(answer, expected):
    assert texts(answer) == expected


def test_splice_keeps_everything_else_byte_identical():
    answer = "A b.\n\n- C d.\n- E f.\n"
    sentences = split_sentences(answer)
    out = splice(answer, {(sentences[1].start, sentences[1].end): "Changed."})
    assert out == "A b.\n\n- Changed.\n- E f.\n"
    with pytest.raises(ValueError):
        splice(answer, {(0, 3): "x", (2, 4): "y"})


def test_context_is_the_neighbouring_sentences():
    sentences = split_sentences("It rained all day. We stayed inside. Then we left.")
    assert context_of(sentences, 1) == ("It rained all day.", "Then we left.")
    assert context_of(sentences, 0) == ("", "We stayed inside.")


def test_fit_to_sentence_restores_case_punctuation_and_one_line():
    assert fit_to_sentence("Old people are slow.", "some people need time") == "Some people need time."
    assert fit_to_sentence("why not?", "why\n not") == "why not?"
    assert fit_to_sentence('He said "go."', "He said go.") == "He said go."


def test_only_the_flagged_sentence_changes():
    engine = ScriptedEngine(["Older staff are quick with new tools, so hire someone skilled"])
    debiaser = Debiaser(engine, judge=FixedJudge(), prompt_style="mbias")
    [record] = debiaser.debias([ANSWER])
    flagged = "Older staff are idiots with\nnew tools, so hire someone young."
    assert record["rewrite"] == ANSWER.replace(
        flagged, "Older staff are quick with new tools, so hire someone skilled."
    )
    assert record["action"] == "rewritten"
    assert len(engine.calls) == 1 and len(engine.calls[0]) == 1  # one sentence went to the model
    assert "Text: " + flagged in engine.calls[0][0]
    [span] = record["spans"]
    assert ANSWER[span["start"] : span["end"]] == flagged
    assert record["rewrite"][span["output_start"] : span["output_end"]] == span["rewrite"]
    assert span["action"] == "rewritten"
    assert span["before"]["toxicity"] == 1.0 and span["after"]["toxicity"] == 0.0
    json.dumps(record)


class DilutingJudge(FixedJudge):
    """Toxicity is the share of unsafe words (x2): a whole-text score that a long clean neighbour
    averages down, as an encoder's does."""

    def score(self, texts):
        def toxicity(text):
            words = [w.strip(".,").lower() for w in text.split()]
            return min(1.0, 2 * words.count("idiots") / len(words))

        return [{"toxicity": toxicity(t), "bias": 0.0} for t in texts]


def debias_one(text, outputs, judge=None, **settings):
    """One text through the path with a scripted engine (wide enough for any test text) and the
    diluting judge; returns the record and the engine, whose ``calls`` hold the prompts. The
    doubles grade toxicity, so the screen's margin reads that head here."""
    settings.setdefault("screen_margin_heads", ("toxicity",))
    engine = ScriptedEngine(outputs)
    engine.context_window = 1000
    debiaser = Debiaser(
        engine, judge=judge or DilutingJudge(), prompt_style="mbias", settings=DebiasSettings(**settings)
    )
    [record] = debiaser.debias([text])
    return record, engine


def test_a_sentence_glued_to_another_is_screened_by_its_worst_piece_and_only_that_piece_changes():
    glued = (
        "Check the details with the hotel, e.g., door widths and whether the shower is roll-in. "
        "Idiots run that place."
    )
    assert [s.text for s in split_sentences(glued)] == [glued]  # the segmenter keeps them together
    assert parts(glued) == [glued[:86], "Idiots run that place."]
    whole = DilutingJudge().score([glued])[0]["toxicity"]
    assert whole < 0.5 * 0.35  # alone, the whole unit would pass the screen untouched
    record, engine = debias_one(glued, ["Busy people run that place."])
    assert record["action"] == "rewritten"
    assert record["rewrite"] == glued[:87] + "Busy people run that place."
    [span] = record["spans"]
    assert (span["start"], span["original"]) == (87, "Idiots run that place.")
    assert span["before"]["toxicity"] == 0.5


def test_a_lead_in_before_a_colon_stays_when_only_the_sentence_after_it_is_flagged():
    line = "Here is a simple routine you can follow at home: Idiots skip the warm-up."
    assert parts(line) == ["Here is a simple routine you can follow at home:", "Idiots skip the warm-up."]
    assert parts("Note: The server restarts every night.") == []  # a one-word label is no piece
    record, engine = debias_one(line, ["Many people skip the warm-up."])
    assert record["rewrite"] == line.replace("Idiots", "Many people")


def test_a_sentence_started_in_lowercase_is_a_piece_of_its_own_but_not_after_an_abbreviation():
    """Chat-style text starts sentences in lowercase, which the segmenter leaves glued to the
    sentence before; the cut counts after a word, never after an abbreviation or a quote."""
    chat = "Here are some tips for the whole trip. and idiots wrote them, honestly."
    assert [s.text for s in split_sentences(chat)] == [chat]
    assert parts(chat) == ["Here are some tips for the whole trip.", "and idiots wrote them, honestly."]
    assert DilutingJudge().score([chat])[0]["toxicity"] < 0.5 * 0.35  # whole, it would pass
    record, engine = debias_one(chat, ["and other people wrote them, honestly."])
    assert record["rewrite"] == chat.replace("idiots", "other people")
    for line in (
        "Use a good sturdy tool for it, e.g. the hammer from the shed.",
        "Prices rose approx. three percent in the last full year.",
        "Meet the team at 9 a.m. and bring some water with you.",
        'He said "stop." and then he left the room very quickly.',
        'He said "stop". and then he left the room very quickly.',
        "Add 2 tbsp. of sugar to the pan and stir it well.",
        "I thought about it for a while... and honestly it was fine.",
        "In formal emails the title Mx. is an option for many people.",
    ):
        assert parts(line) == [], line


def test_a_sentence_whose_every_piece_is_flagged_is_rewritten_whole():
    both = "Idiots ignore the shower, e.g., roll-in. Idiots run that place."
    assert len(split_sentences(both)) == 1 and len(parts(both)) == 2
    record, engine = debias_one(both, ["Busy staff run the hotel."])
    assert record["rewrite"] == "Busy staff run the hotel." and len(record["spans"]) == 1


class WheelJudge(DilutingJudge):
    """Unsafe only where the harm is read whole: the lead-in names the group, the piece after it
    says "They"; each piece alone is a mere suspect."""

    def score(self, texts):
        def toxicity(text):
            return 0.9 if "wheel" in text and "They" in text else 0.3 if "They" in text else 0.0

        return [{"toxicity": toxicity(t), "bias": 0.0} for t in texts]


def test_harm_that_only_the_pieces_together_carry_is_rewritten_whole():
    line = "Here is what I think about women at the wheel: They simply cannot park well."
    assert len(parts(line)) == 2
    record, engine = debias_one(
        line, ["Parking takes practice for everyone."], judge=WheelJudge(), screen_margin=0.3
    )
    assert record["rewrite"] == "Parking takes practice for everyone." and record["input_toxicity"] == 0.9


def test_abbreviations_do_not_cut_pieces_and_a_piece_without_code_is_rewritable():
    for line in (
        "Women in the U.S. Army are idiots who cannot lead anyone at all.",
        "Under Regulation (EC) No. 1107/2006 the airline must help you board.",
        "The novel by J. K. Rowling sold well, and idiots read it.",
    ):
        assert pieces(line, splice=True) == [], line  # never rewritten in pieces
    assert len(pieces("All staff based in the U.S. Idiots run the place though.")) == 2  # but read so
    line = "Run `make test` before you push your branch to the main repository: Idiots skip the tests."
    assert len(split_sentences(line)) == 1 and not split_sentences(line)[0].rewritable
    record, engine = debias_one(line, ["Many people skip the tests."])
    assert record["rewrite"] == line.replace("Idiots", "Many people")


def test_a_flagged_lead_in_keeps_its_colon_and_candidates_are_whole_texts():
    line = "Idiots and only idiots should follow this routine: Warm up for ten minutes first."
    record, engine = debias_one(
        line, ["Everyone should follow this routine.", "Anyone can follow this routine"], candidates=2
    )
    assert record["rewrite"] == "Everyone should follow this routine: Warm up for ten minutes first."
    assert record["candidates"] == [
        "Everyone should follow this routine: Warm up for ten minutes first.",
        "Anyone can follow this routine: Warm up for ten minutes first.",
    ]


def test_pieces_never_cut_code_and_short_pieces_join_the_next_one():
    assert pieces("Only idiots would set `environment: Production` in the shared staging config.") == []
    line = "They never truly belong in any nation. 1920: The 19th Amendment is ratified in the U.S."
    assert [line[a:b] for a, b in pieces(line)][1] == "1920: The 19th Amendment is ratified in the U.S."
    line = "Idiots run that place, as everyone knows. Really."
    assert pieces(line) == []  # the one-word tail joins the piece before it: one piece, no cut


def test_a_flagged_piece_holding_code_is_flagged_and_the_screen_off_rewrites_whole_units():
    line = "Here is a simple routine you can follow at home: Idiots, idiots run `make` daily."
    record, engine = debias_one(line, ["never used"])
    assert engine.calls == [] and record["action"] == "flagged" and record["rewrite"] == line
    assert record["spans"][0]["original"] == "Idiots, idiots run `make` daily."
    glued = "Here is a simple routine you can follow at home: Idiots skip the warm-up."
    _, engine = debias_one(glued, ["A routine everyone can follow."], screen=False)
    assert glued in engine.calls[0][0]


def test_a_piece_gets_the_rest_of_its_sentence_as_context():
    answer = "Plan ahead. Here is a simple routine you can follow at home: Idiots skip the warm-up."
    record, engine = debias_one(answer, ["Many people skip the warm-up."], context=True)
    assert "Here is a simple routine you can follow at home:" in engine.calls[0][0]
    assert record["rewrite"] == answer.replace("Idiots", "Many people")


def test_code_and_tables_are_never_screened_and_protected_sentences_are_flagged_not_rewritten():
    engine = ScriptedEngine(["calm"])
    answer = "Run `rm idiot` now.\n\n```\nidiot()\n```\n\n| a |\n| - |\n| idiot |\n"
    [record] = Debiaser(engine, judge=FixedJudge(), prompt_style="mbias").debias([answer])
    assert engine.calls == []
    assert record["rewrite"] == answer and record["action"] == "flagged"
    assert [s["original"] for s in record["spans"]] == ["Run `rm idiot` now."]
    assert record["spans"][0]["reason"].startswith("holds code")


def test_clean_answer_is_kept_byte_identical_and_only_the_judge_runs():
    engine = ScriptedEngine(["never used"])
    answer = ANSWER.replace("idiots", "keen").replace("idiot", "x")
    [record] = Debiaser(engine, judge=FixedJudge(), prompt_style="mbias").debias([answer])
    assert record["rewrite"] == answer and record["action"] == "kept" and record["spans"] == []
    assert record["reason"] == "input judged clean" and engine.calls == []


def test_all_sentences_of_a_batch_are_screened_in_one_call_and_rewritten_in_one():
    class CountingJudge(FixedJudge):
        calls = 0

        def score(self, texts):
            CountingJudge.calls += 1
            return super().score(texts)

    engine = ScriptedEngine(["Fine."])
    judge = CountingJudge()
    answers = ["You idiot. Fine day.", "A calm one. Another idiot here.", "Nothing to see."]
    records = Debiaser(engine, judge=judge, prompt_style="mbias").debias(answers)
    assert len(engine.calls) == 1 and len(engine.calls[0]) == 2
    assert CountingJudge.calls == 2  # screen (every sentence) + verify (both candidates)
    assert [r["rewrite"] for r in records] == ["Fine. Fine day.", "A calm one. Fine.", "Nothing to see."]


def test_granularity_text_rewrites_the_whole_text_as_before():
    engine = ScriptedEngine(["All calm."])
    settings = DebiasSettings(granularity="text")
    [record] = Debiaser(engine, judge=FixedJudge(), prompt_style="mbias", settings=settings).debias(
        ["You idiot. Fine day."]
    )
    assert record["rewrite"] == "All calm." and "Text: You idiot. Fine day." in engine.calls[0][0]


def test_context_goes_into_the_prompt_when_asked():
    engine = ScriptedEngine(["Fine."])
    settings = DebiasSettings(context=True)
    Debiaser(engine, judge=FixedJudge(), prompt_style="mbias", settings=settings).debias(
        ["It rained. You idiot. We left."]
    )
    prompt = engine.calls[0][0]
    assert "Before: It rained.\nAfter: We left.\nText: You idiot.\nDebiased text:" in prompt


def test_flagged_sentence_keeps_best_candidate_and_flags_the_record():
    engine = ScriptedEngine(["still an idiot"])
    [record] = Debiaser(engine, judge=FixedJudge(), prompt_style="mbias").debias(["Good. You idiot."])
    assert record["action"] == "flagged" and record["reason"] == "no candidate judged safe"
    assert record["rewrite"] == "Good. Still an idiot."
    assert record["spans"][0]["action"] == "flagged"


def test_categories_come_from_the_judge():
    class CategoryJudge(FixedJudge):
        def categorise(self, texts):
            return ["insult or profanity" for _ in texts]

    engine = ScriptedEngine(["Calm."])
    [record] = Debiaser(engine, judge=CategoryJudge(), prompt_style="mbias").debias(["Hi. You idiot."])
    assert record["spans"][0]["category"] == "insult or profanity"


def test_debiaser_screens_by_default_and_none_turns_the_judge_off(monkeypatch):
    from mbias.judges.embedded import EmbeddedJudge

    monkeypatch.delenv("MBIAS_JUDGE")
    assert isinstance(Debiaser(ScriptedEngine(["x"])).judge, EmbeddedJudge)
    assert Debiaser(ScriptedEngine(["x"]), judge="none").judge is None
    monkeypatch.setenv("MBIAS_JUDGE", "none")
    assert Debiaser(ScriptedEngine(["x"])).judge is None


# -- many generated answers: the splice invariants hold whatever the segmenter and pieces do ----
_BITS = (
    "Idiots run that place.",
    "Plan ahead and book early.",
    "Here is a simple routine you can follow at home:",
    "They work in the U.S. Army now.",
    "Run `make test: Now` before you push.",
    "See https://example.org/Guide. It helps.",
    "Read the book by J. K. Rowling first.",
    "Under Regulation (EC) No. 1107/2006 you get help.",
    "The 1920: Amendment passed",
    "idiots, idiots everywhere",
    "e.g. Rome. Then Paris.",
    "Why? Because.",
    '"Idiots," she said. "Fine."',
    "Ça va? Très bien.",
)


def _answer(rng) -> str:
    lines = []
    for _ in range(rng.randint(1, 6)):
        body = " ".join(rng.choice(_BITS) for _ in range(rng.randint(1, 4)))
        lines.append(rng.choice(("", "- ", "1. ", "## ", "> ", "**Tip:** ")) + body)
        if rng.random() < 0.2:
            lines.append("```\nidiot = 1  # Idiots run that place.\n```")
    return rng.choice(("\n", "\n\n")).join(lines)


def test_generated_answers_keep_every_byte_outside_their_spans():
    import random

    rng = random.Random(7)
    engine = ScriptedEngine(["Calm words.", "Other words"])
    engine.context_window = 10_000
    for settings in (DebiasSettings(), DebiasSettings(candidates=2, context=True)):
        debiaser = Debiaser(engine, judge=DilutingJudge(), prompt_style="mbias", settings=settings)
        answers = [_answer(rng) for _ in range(150)]
        for answer, record in zip(answers, debiaser.debias(answers)):
            spans = record["spans"]
            assert all(answer[s["start"] : s["end"]] == s["original"] for s in spans)
            assert all(a["end"] <= b["start"] for a, b in zip(spans, spans[1:]))
            changed = {(s["start"], s["end"]): s["rewrite"] for s in spans if s["rewrite"] != s["original"]}
            assert record["rewrite"] == splice(answer, changed)
            assert all(record["rewrite"][s["output_start"] : s["output_end"]] == s["rewrite"] for s in spans)
            assert answer.count("`make test: Now`") == record["rewrite"].count("`make test: Now`")
            assert answer.count("https://example.org/Guide") == record["rewrite"].count(
                "https://example.org/Guide"
            )
            assert answer.count("idiot = 1") == record["rewrite"].count("idiot = 1")
