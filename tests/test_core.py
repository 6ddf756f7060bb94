"""Prompts, records and the Debiaser's choose step: the pieces every command shares."""

from __future__ import annotations

import json
import re

import pytest

from mbias.errors import MbiasError
from mbias.intervene import REASON_CLEAN, REASON_NO_REWRITE, REASON_SUSPECT_KEPT, Debiaser, DebiasSettings
from mbias.judges import head_margin
from mbias.prompts import INSTRUCTION, clean_output, is_refusal, render, repeats_itself
from mbias.records import RecordWriter, as_records, read_records, write_records
from mbias.splits import bucket, is_dev, is_heldout, paper_test_set
from tests.doubles import FixedJudge, ScriptedEngine


def test_instruction_is_the_papers():
    assert INSTRUCTION.startswith("You are a text debiasing bot")
    assert INSTRUCTION.endswith("Debias this text by rephrasing it to be free of bias:")


def test_render_styles_embed_text_and_instruction():
    text = "Some text about people."
    for style in ("mbias", "fewshot", "mistral-inst", "chat"):
        prompt = render(text, style)
        assert text in prompt and INSTRUCTION in prompt
    assert render(text, "mistral-inst").startswith("[INST]")
    assert render(text, "fewshot").count("Debiased text:") > render(text, "mbias").count("Debiased text:")
    assert render(text, "mbias").endswith("Debiased text:")
    with pytest.raises(ValueError):
        render(text, "nope")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (" The manager made a mistake.\nText: next example", "The manager made a mistake."),
        ("Here is a debiased version: People differ.", "People differ."),
        ('"People differ."', "People differ."),
        ("Sure! Here's the rephrased text: \u201cPeople differ.\u201d", "People differ."),
        ("People differ.\n\nYou are a text debiasing bot", "People differ."),
        ("\n\nPeople differ.", "People differ."),
    ],
)
def test_clean_output(raw, expected):
    assert clean_output(raw, "source") == expected


def test_refusals_detected():
    assert is_refusal("I'm sorry, but I cannot assist with that.")
    assert is_refusal("As an AI, I won't rephrase this")
    assert not is_refusal("The roads in town need repair.")


@pytest.mark.parametrize(
    "rewrite, source, loops",
    [
        # garbled rewrites a blind read or the long-answer benchmark found
        ("These move 11 days earlier each year each year.", "These move 11 days earlier each year.", True),
        ("Men can be bisexual, bisexual, bisexual, bisexual.", "Men can't be bisexual.", True),
        (
            "Moving refugees to a country that agreed to admit them, to a country that agreed to accep",
            "Moving refugees to a country that agreed to admit them.",
            True,
        ),
        # repeats the source already makes, and ordinary rewrites
        ("It moves each year each year.", "It moves each year each year!", False),
        ("It moves each year each year.", "", True),
        ("Shops open late; shops open late on Fridays too.", "Shops open late; shops open late.", False),
        ("Shops open late; shops open late on Fridays too.", "", True),
        ("Some people study hard and some people rest.", "Lazy people never study.", False),
        ("", "anything", False),
    ],
)
def test_decoding_loops_are_told_from_rewrites(rewrite, source, loops):
    assert repeats_itself(rewrite, source) is loops


def test_a_looping_rewrite_is_never_spliced_in():
    """A loop is not a rewrite: a flagged text keeps its words and is flagged; a suspect keeps its
    text as clean."""
    record, _ = two_head_debias("scum rent flats", "people rent flats rent flats")
    assert outcome(record) == ("flagged", "scum rent flats", REASON_NO_REWRITE)
    record, _ = two_head_debias("lazy people rent flats", "people rent flats rent flats")
    assert outcome(record) == ("kept", "lazy people rent flats", REASON_SUSPECT_KEPT)
    # without a judge nothing is verified: `mbias mine` sees the loop and trains away from it
    engine = ScriptedEngine(["people rent flats rent flats"])
    [record] = Debiaser(engine, judge="none", prompt_style="mbias").debias(["scum rent flats"])
    assert record["rewrite"] == "people rent flats rent flats"


def test_splits_are_stable_and_normalised():
    assert bucket("Hello  World") == bucket("hello world")
    share = sum(is_heldout(f"sentence number {i}") for i in range(2000)) / 2000
    assert 0.15 < share < 0.25
    dev = [f"sentence number {i}" for i in range(2000) if is_dev(f"sentence number {i}")]
    assert 0.05 < len(dev) / 2000 < 0.15 and not any(is_heldout(t) for t in dev)


def test_test_set_texts_reads_one_file_or_every_file_of_a_folder(tmp_path):
    (tmp_path / "a.csv").write_text(
        'biased_text,debiased_text\n"Old  People",Older people\n', encoding="utf-8"
    )
    (tmp_path / "b.csv").write_text("id,unbiased_text\n1,Some text\n2,\n", encoding="utf-8")
    assert paper_test_set(tmp_path / "a.csv") == {"old people", "older people"}
    assert paper_test_set(tmp_path) == {"old people", "older people", "some text"}


def test_read_records_formats(tmp_path):
    (tmp_path / "a.csv").write_text("biased_text,x\nhello,1\nworld,2\n", encoding="utf-8")
    (tmp_path / "a.jsonl").write_text('{"id": "k", "text": "hi"}\n\n{"id": "m", "text": "yo"}\n')
    records = read_records(tmp_path / "a.csv")
    assert [r["text"] for r in records] == ["hello", "world"] and records[0]["id"] == "0"
    assert [r["id"] for r in read_records(tmp_path / "a.jsonl")] == ["k", "m"]
    write_records(tmp_path / "b.parquet", records)
    assert [r["text"] for r in read_records(tmp_path / "b.parquet")] == ["hello", "world"]
    (tmp_path / "bom.jsonl").write_text('{"text": "first"}\n', encoding="utf-8-sig")
    assert [r["text"] for r in read_records(tmp_path / "bom.jsonl")] == ["first"]
    (tmp_path / "array.json").write_text('[\n  {"text": "one"},\n  {"text": "two"}\n]\n', encoding="utf-8")
    assert [r["text"] for r in read_records(tmp_path / "array.json")] == ["one", "two"]
    (tmp_path / "two.csv").write_text("id,text,body\n1,A title,Women are bad drivers.\n", encoding="utf-8")
    [record] = read_records(tmp_path / "two.csv", "body")
    assert (record["text"], record["file_text"]) == ("Women are bad drivers.", "A title")


@pytest.mark.parametrize(
    ("name", "content", "column", "message"),
    [
        ("missing.csv", None, None, "no such file"),
        ("bad.csv", b"text\n\xff\xfe broken\n", None, "not UTF-8"),
        ("empty.jsonl", b"", None, "no rows"),
        ("cols.csv", b"a,b\n1,2\n", None, "none of the columns"),
        ("cols2.csv", b"text\nhi\n", "nope", "no column 'nope'"),
        ("f.txt", b"hello", None, "unsupported file type"),
        ("bad.jsonl", b'{"text": "a"}\n{oops\n', None, "not valid JSON"),
        ("dup.jsonl", b'{"id": 1, "text": "a"}\n{"id": 1, "text": "b"}\n', None, "duplicate"),
    ],
)
def test_read_records_errors(tmp_path, name, content, column, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(MbiasError, match=message):
        read_records(path, column)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_writer_resume_skips_done_ids(tmp_path, suffix):
    out = tmp_path / f"out{suffix}"
    writer = RecordWriter(out)
    writer.write({"id": "0", "text": "a", "rewrite": "A"})
    writer.close(complete=False)  # interrupted
    with pytest.raises(MbiasError, match="already exists"):
        RecordWriter(out)
    with RecordWriter(out, resume=True) as resumed:
        assert resumed.done_ids == {"0"}
        resumed.write({"id": "1", "text": "b", "rewrite": "B"})
    rows = read_records(out)
    assert [r["id"] for r in rows] == ["0", "1"]
    assert [r["rewrite"] for r in rows] == ["A", "B"]


@pytest.mark.parametrize("suffix", [".csv", ".tsv"])
def test_a_csv_header_widens_when_a_later_record_brings_a_new_field(tmp_path, suffix):
    """A kept record has no scores, a rewritten one does: no field of any row is dropped."""
    out = tmp_path / f"out{suffix}"
    with RecordWriter(out) as writer:
        writer.write({"id": "0", "text": "a", "action": "kept", "reason": "clean"})
        writer.write({"id": "1", "text": "b" * 200_000, "action": "rewritten", "similarity": 0.8})
    with RecordWriter(out, resume=True) as resumed:
        resumed.write({"id": "2", "text": "c", "action": "flagged", "escalated": True})
    rows = read_records(out)
    assert [r["id"] for r in rows] == ["0", "1", "2"]
    assert (rows[0]["reason"], rows[1]["similarity"], rows[2]["escalated"]) == ("clean", "0.8", "True")
    assert rows[0]["similarity"] == "" and rows[1]["reason"] == ""


def test_resume_drops_a_half_written_last_line_and_refuses_a_file_without_ids(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text('{"id": "0", "text": "a"}\n{"id": "1", "te', encoding="utf-8")  # killed mid-line
    with RecordWriter(out, resume=True) as resumed:
        assert resumed.done_ids == {"0"}
        resumed.write({"id": "1", "text": "b"})
    assert [r["id"] for r in read_records(out)] == ["0", "1"]
    whole = tmp_path / "whole.jsonl"
    whole.write_text('{"id": "0", "text": "a"}\n{"id": "1", "text": "b"}', encoding="utf-8")  # no newline
    with RecordWriter(whole, resume=True) as resumed:
        assert resumed.done_ids == {"0", "1"}  # a whole last record is kept, not cut
        resumed.write({"id": "2", "text": "c"})
    assert [r["id"] for r in read_records(whole)] == ["0", "1", "2"]
    foreign = tmp_path / "foreign.csv"
    foreign.write_text("foo,bar\n1,2\n", encoding="utf-8")
    with pytest.raises(MbiasError, match="no id column"):
        RecordWriter(foreign, resume=True)


@pytest.mark.parametrize("suffix", [".csv", ".tsv"])
def test_resume_repairs_a_csv_cut_anywhere_in_its_last_row_even_inside_a_multiline_cell(tmp_path, suffix):
    first, last = {"id": "0", "text": "a"}, {"id": "1", "text": 'Line one, "quoted"\nline two\n\nend é'}
    full = tmp_path / f"full{suffix}"
    with RecordWriter(full) as writer:
        writer.write(first)
        writer.write(last)
    data = full.read_bytes()
    start = len(data) - len(data.split(b"\r\n1")[1]) - 1  # where the last row begins
    for cut in range(start, len(data)):  # a kill after every byte of the last row
        out = tmp_path / f"cut{suffix}"
        out.write_bytes(data[:cut])
        with RecordWriter(out, resume=True) as resumed:
            assert resumed.done_ids == {"0"}, cut
            resumed.write(last)
        assert read_records(out) == read_records(full), cut
    broken = tmp_path / f"broken{suffix}"
    broken.write_bytes(data.replace(b'"quoted"', b'"quoted" x', 1))  # bad CSV before the end
    with pytest.raises(MbiasError, match="not valid CSV before its end"):
        RecordWriter(broken, resume=True)
    assert broken.read_bytes() == data.replace(b'"quoted"', b'"quoted" x', 1)  # nothing cut


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_resume_refuses_a_file_written_from_another_input(tmp_path, suffix):
    records = [
        {"id": "r0", "text": 'a\nmulti-line, "quoted" text'},
        {"id": "r1", "text": ""},
        {"id": "r2", "text": "c"},
    ]
    out = tmp_path / f"out{suffix}"
    with RecordWriter(out) as writer:
        for record in records[:2]:
            writer.write({**record, "rewrite": "x"})
    with RecordWriter(out, resume=True) as resumed:
        assert resumed.pending([{**records[1], "text": None}, *records[::2]]) == [records[2]]
    with (
        RecordWriter(out, resume=True) as resumed,
        pytest.raises(MbiasError, match="row r0 holds another text"),
    ):
        resumed.pending([{"id": "r0", "text": "foo"}])
    other = tmp_path / f"other{suffix}"  # another command's file: ids, no text
    write_records(other, [{"id": "r0", "label": 1}])
    with RecordWriter(other, resume=True) as resumed, pytest.raises(MbiasError, match="another command"):
        resumed.pending(records)


def test_outputs_never_overwrite_their_input_nor_start_where_they_cannot_be_written(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text('{"id": "0", "text": "a"}\n', encoding="utf-8")
    with pytest.raises(MbiasError, match="is the input file"):
        RecordWriter(source, resume=True, reads=[str(source)])
    with pytest.raises(MbiasError, match="is the input file"):
        write_records(tmp_path / "." / "in.jsonl", [{"id": "0"}], reads=[source])
    with pytest.raises(MbiasError, match="is a file, not a folder"):
        RecordWriter(source / "out.jsonl")
    assert source.read_text(encoding="utf-8") == '{"id": "0", "text": "a"}\n'


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_write_records_leaves_the_old_file_when_writing_fails(tmp_path, suffix):
    out = tmp_path / f"report{suffix}"
    write_records(out, [{"id": "old", "text": "kept"}])
    before = out.read_bytes()

    def failing():
        yield {"id": "0", "text": "a"}
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError):
        write_records(out, failing())
    assert out.read_bytes() == before and list(tmp_path.iterdir()) == [out]  # no draft left behind
    write_records(out, [{"id": "1", "text": "b"}])
    assert [r["id"] for r in read_records(out)] == ["1"]
    write_records(out, [])  # an empty table is still a file of its format
    assert out.exists() and list(tmp_path.iterdir()) == [out]


def test_the_api_takes_texts_or_records_and_names_anything_else():
    debiaser = Debiaser(ScriptedEngine({}), judge=None, prompt_style="mbias")
    out = debiaser.debias(["Fine \ud800 text.", None, {"id": "r", "text": "Hi.", "note": "x\udfff"}])
    assert [r["text"] for r in out] == ["Fine \ufffd text.", None, "Hi."]  # a lone surrogate: U+FFFD
    assert out[2]["note"] == "x\ufffd" and out[1]["reason"] == "empty input"
    json.dumps(out).encode()  # every field can be written as UTF-8
    for bad, message in [
        ("Hello.", "not one string"),
        ([5], "item 0 is int"),
        (["Hi.", b"bytes"], "item 1 is bytes"),
        ([{"id": "a", "text": 3}], "item 0: its text is int"),
    ]:
        with pytest.raises(MbiasError, match=message):
            debiaser.debias(bad)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"candidates": 0}, "candidates must be a whole number of at least 1"),
        ({"max_new_tokens": -5}, "max_new_tokens must be"),
        ({"batch_size": 2.5}, "batch_size must be"),
        ({"retries": -1}, "retries must be"),
        ({"temperature": -1.0}, "temperature must be 0 or more"),
        ({"min_similarity": float("nan")}, "min_similarity must be in [0, 1]"),
        ({"screen_margin": float("nan")}, "screen_margin must be in (0, 1]"),
        ({"granularity": "word"}, "granularity must be one of"),
        ({"candidates": 3, "sample_temperature": 0.0}, "sample_temperature must be above 0"),
        ({"retries": 2, "sample_temperature": 0.0}, "sample_temperature must be above 0"),
    ],
)
def test_settings_that_would_fail_deep_in_a_job_are_refused_when_made(settings, message):
    with pytest.raises(MbiasError, match=re.escape(message)):
        DebiasSettings(**settings)


def test_a_debiaser_refuses_what_it_could_not_use_before_any_work():
    engine = ScriptedEngine({})
    for kwargs, message in [
        ({"engine": 5}, "engine must be a name, a spec or an object with .generate()"),
        ({"engine": engine, "judge": 5}, "judge must be a name, a spec or an object with .score()"),
        ({"engine": engine, "settings": {"batch_size": 2}}, "settings must be a DebiasSettings, not dict"),
        ({"engine": engine, "prompt_style": "nope"}, "prompt_style must be one of"),
    ]:
        with pytest.raises(MbiasError, match=re.escape(message)):
            Debiaser(**{"judge": None, **kwargs})


def test_explain_shows_square_brackets_as_text_not_markup():
    from rich.console import Console

    from mbias.commands.explain import explain_record

    text = "Women are bad at math [/bold] and [b]worse[/b] at [red]logic[/red]."
    span = {
        "start": 0,
        "end": len(text),
        "output_start": 0,
        "output_end": len(text),
        "original": text,
        "rewrite": text,
        "action": "flagged",
        "reason": "no candidate [judged] safe",
        "category": "[x]",
    }
    record = {
        "id": "[id]",
        "text": text,
        "rewrite": text,
        "action": "flagged",
        "reason": "[why]",
        "spans": [span],
    }
    shown = Console(record=True, width=400)
    explain_record(record, console=shown)  # "[/bold]" closed no tag: rich raised MarkupError
    printed = shown.export_text()
    assert printed.count("[b]worse[/b]") == 3 and "[red]logic[/red]" in printed  # answer, original, rewrite
    assert all(part in printed for part in ("[id]", "[why]", "[judged]", "[x]"))


def test_debiaser_never_returns_empty():
    debiaser = Debiaser(
        ScriptedEngine(["", "  "]), prompt_style="mbias", settings=DebiasSettings(candidates=2)
    )
    [record] = debiaser.debias(["You idiot, fix the printer."])
    assert record["rewrite"] == "You idiot, fix the printer." and record["action"] == "flagged"
    [refused] = Debiaser(ScriptedEngine(["I'm sorry, I cannot help."]), prompt_style="mbias").debias(["x y"])
    assert refused["action"] == "flagged" and refused["rewrite"] == "x y"


def test_a_rewrite_that_changes_only_punctuation_is_the_original_given_back():
    """A judge that a question mark sways (v9 scored one at 0.42, its full-stop twin at 0.11) must
    not count the twin as a rewrite: the sentence comes back byte-identical and still flagged, and a
    rewrite that changes a word is still taken."""
    text = "So that's order 4417, going to Elm Street?"
    judge = FixedJudge(unsafe_words=("Street?",))
    [record] = Debiaser(ScriptedEngine(["so that's order 4417 going to Elm Street."]), judge=judge).debias(
        [text]
    )
    assert record["rewrite"] == text and record["action"] == "flagged"
    [changed] = Debiaser(ScriptedEngine(["So that's order 4417, going to Oak Street."]), judge=judge).debias(
        [text]
    )
    assert (
        changed["rewrite"] == "So that's order 4417, going to Oak Street."
        and changed["action"] == "rewritten"
    )


def test_debiaser_screens_and_chooses_safest_candidate():
    engine = ScriptedEngine(["you idiot fix the printer", "please fix the printer", "cats"])
    debiaser = Debiaser(
        engine, judge=FixedJudge(), prompt_style="mbias", settings=DebiasSettings(candidates=3)
    )
    clean, toxic = debiaser.debias(["The printer is broken.", "you idiot fix the printer"])
    assert clean["action"] == "kept" and clean["rewrite"] == clean["text"]
    assert toxic["action"] == "rewritten" and toxic["rewrite"] == "please fix the printer"
    # the clean text skipped generation; the toxic one got its greedy rewrite, then two samples
    assert [len(call) for call in engine.calls] == [1, 1]
    assert toxic["candidates"] == ["you idiot fix the printer", "please fix the printer", "cats"]
    assert toxic["input_toxicity"] == 1.0 and toxic["toxicity"] == 0.0


class ReaderJudge(FixedJudge):
    """FixedJudge with reader heads that like a polite "kindly" and dislike everything else."""

    def __init__(self):
        super().__init__()
        self.assessed = []

    def assess(self, sources, candidates):
        self.assessed.append(list(candidates))
        return [0.9 if "kindly" in c else 0.2 for c in candidates]


def test_the_reader_heads_choose_among_candidates_and_their_pick_is_not_retried():
    """With reader heads, the candidate readers would most likely accept wins over the one the judge
    passes and finds most similar. When the judge flags the readers' pick though it passed another,
    the record says so and neither retries nor escalation run: the choice was deliberate. A
    candidate that lost the message never wins. Without reader heads (or with one candidate):
    the judge's verdict, then similarity."""
    import mbias.intervene as intervene

    outputs = ["fix the printer now idiot", "fix the printer now please", "kindly fix the printer now"]
    text = "you idiot fix the printer now"
    judge = ReaderJudge()
    [record] = Debiaser(
        ScriptedEngine(outputs), judge=judge, prompt_style="mbias", settings=DebiasSettings(candidates=3)
    ).debias([text])
    assert record["rewrite"] == outputs[2] and record["action"] == "rewritten"
    assert judge.assessed == [outputs]
    [plain] = Debiaser(
        ScriptedEngine(outputs),
        judge=FixedJudge(),
        prompt_style="mbias",
        settings=DebiasSettings(candidates=3),
    ).debias([text])
    assert plain["rewrite"] == "fix the printer now please"  # safe, then the most similar
    single = ReaderJudge()
    [one] = Debiaser(ScriptedEngine(outputs), judge=single, prompt_style="mbias").debias([text])
    assert one["rewrite"] == outputs[0] and one["reason"] == intervene.REASON_UNSAFE
    assert single.assessed == []
    liked = ["kindly, idiot, fix the printer now", "fix the printer now please", "kindly go"]
    engine = ScriptedEngine(liked)
    settings = DebiasSettings(candidates=3, retries=2, escalate="hf:larger")
    [chosen] = Debiaser(engine, judge=ReaderJudge(), prompt_style="mbias", settings=settings).debias([text])
    assert chosen["rewrite"] == liked[0] and chosen["action"] == "flagged"
    assert chosen["reason"] == intervene.REASON_READERS_PICK
    assert "retried" not in chosen and "escalated" not in chosen and len(engine.calls) == 2


class GradedJudge(FixedJudge):
    """Toxicity 0.3 for "jerk": below the verify threshold, above a screen margin of 0.5."""

    def score(self, texts):
        def toxicity(text):
            return 1.0 if "idiot" in text else 0.3 if "jerk" in text else 0.0

        return [{"toxicity": toxicity(t), "bias": 0.0} for t in texts]


def test_screen_margin_sends_borderline_texts_to_the_rewriter():
    for margin, generated in ((1.0, 0), (0.5, 1)):
        engine = ScriptedEngine(["fix the printer, jerk"])
        settings = DebiasSettings(screen_margin=margin, screen_margin_heads=("toxicity",), retries=0)
        debiaser = Debiaser(engine, judge=GradedJudge(), prompt_style="mbias", settings=settings)
        [record] = debiaser.debias(["fix the printer, jerk"])
        assert len(engine.calls) == generated
        assert record["action"] == "kept" and record["rewrite"] == "fix the printer, jerk"


class TwoHeadJudge(FixedJudge):
    """Per head 0.3 (a suspect under the threshold of 0.5) or 1.0: toxicity for "jerk" / "idiot",
    bias for "lazy" / "scum"."""

    thresholds = {"toxicity": 0.5, "bias": 0.5}

    def score(self, texts):
        def grade(text, suspect, unsafe):
            return 1.0 if unsafe in text else 0.3 if suspect in text else 0.0

        return [{"toxicity": grade(t, "jerk", "idiot"), "bias": grade(t, "lazy", "scum")} for t in texts]

    def is_unsafe(self, scores, margin=1.0):
        return any(v >= 0.5 * head_margin(margin, k) for k, v in scores.items())


def outcome(record):
    """What the Debiaser did with a record and why."""
    return record["action"], record["rewrite"], record["reason"]


def two_head_debias(text, output, **settings):
    engine = ScriptedEngine([output])
    settings = DebiasSettings(**{"screen_margin": 0.5, "retries": 0, **settings})
    [record] = Debiaser(engine, judge=TwoHeadJudge(), prompt_style="mbias", settings=settings).debias([text])
    return record, engine


def test_by_default_the_screen_margin_reads_the_bias_head_only():
    """A bias suspect goes to the model; a text only the toxicity head suspects, under its
    threshold, is passed as clean; over the threshold either head stops a text."""
    for text, generated in (
        ("lazy people rent flats", 1),
        ("fix the printer, jerk", 0),
        ("you idiot", 1),
        ("scum rent flats", 1),
    ):
        record, engine = two_head_debias(text, "people rent flats")
        assert len(engine.calls) == generated, text
        if not generated:
            assert (record["rewrite"], record["reason"]) == (text, REASON_CLEAN)
    assert DebiasSettings(screen_margin_heads="bias").screen_margin_heads == ("bias",)
    wide = {"screen_margin_heads": ("toxicity", "bias")}
    _, engine = two_head_debias("fix the printer, jerk", "please fix it", **wide)
    assert len(engine.calls) == 1


def test_a_suspects_rewrite_must_clear_the_margin_on_every_head():
    """A bias suspect's rewrite that only trades the bias for a toxic word under its threshold is
    not safer: the suspect keeps its text."""
    record, _ = two_head_debias("lazy people rent flats", "people rent flats, jerk")
    assert outcome(record) == ("kept", "lazy people rent flats", REASON_SUSPECT_KEPT)
    record, _ = two_head_debias("lazy people rent flats", "people rent flats")
    assert (record["action"], record["rewrite"]) == ("rewritten", "people rent flats")


class CategoryJudge(TwoHeadJudge):
    """TwoHeadJudge whose category head is sure only of texts that name "people"."""

    def __init__(self):
        super().__init__()
        self.asked = []

    def resembles_harm(self, texts):
        self.asked.append(list(texts))
        return ["people" in t for t in texts]


def test_a_suspect_goes_to_the_rewriter_only_when_it_resembles_a_harm():
    """Under the threshold, over the margin: rewritten only when the judge's category head is
    sure of it; over the threshold, whatever it resembles; a judge without a category's say sends
    every suspect, as before. The category head is asked once, about the suspects alone."""
    settings = DebiasSettings(screen_margin=0.5, retries=0)
    for text, generated in (
        ("lazy people rent flats", 1),  # a suspect that resembles a harm
        ("lazy sourdough rises slowly", 0),  # a suspect that does not: passed as clean
        ("scum sourdough rises slowly", 1),  # over the threshold
        ("the bread rises", 0),
    ):
        engine, judge = ScriptedEngine(["people rent flats"]), CategoryJudge()
        [record] = Debiaser(engine, judge=judge, prompt_style="mbias", settings=settings).debias([text])
        assert len(engine.calls) == generated, text
        assert judge.asked == ([[text]] if text.startswith("lazy") else []), text
        if not generated:
            assert (record["rewrite"], record["reason"]) == (text, REASON_CLEAN)
    record, engine = two_head_debias("lazy sourdough rises slowly", "sourdough rises slowly")
    assert len(engine.calls) == 1 and record["action"] == "rewritten"
    # sentences of an answer: only the suspect that resembles a harm is sent
    engine = ScriptedEngine(["Many people rent flats."])
    answer = "Some lazy people rent flats. The lazy sourdough rises slowly. Bread is good."
    debiaser = Debiaser(engine, judge=CategoryJudge(), prompt_style="mbias", settings=settings)
    [record] = debiaser.debias([answer])
    assert len(engine.calls[0]) == 1 and "Text: Some lazy people rent flats." in engine.calls[0][0]
    assert record["rewrite"] == "Many people rent flats. The lazy sourdough rises slowly. Bread is good."


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"screen_margin": 1.5}, "screen_margin must be in (0, 1]"),
        ({"screen_margin_heads": ("biased",)}, "screen_margin_heads ['biased']"),
    ],
)
def test_screen_settings_a_judge_cannot_honour_are_refused(settings, message):
    with pytest.raises(MbiasError, match=re.escape(message)):
        two_head_debias("lazy people", "people", **settings)


def test_a_suspect_keeps_its_text_unless_a_rewrite_clears_the_screen():
    """Under the threshold but over the screen's margin: a rewrite must pass the screen itself."""
    settings = DebiasSettings(screen_margin=0.5, screen_margin_heads=("toxicity",), retries=0)
    for output, action, rewrite in (
        ("fix the printer now, jerk", "kept", "fix the printer, jerk"),  # as suspect as before
        ("please fix the printer", "rewritten", "please fix the printer"),
        ("cats", "flagged", "cats"),  # clears the screen, loses the meaning: flagged, as any unit
    ):
        debiaser = Debiaser(
            ScriptedEngine([output]), judge=GradedJudge(), prompt_style="mbias", settings=settings
        )
        [record] = debiaser.debias(["fix the printer, jerk"])
        assert (record["action"], record["rewrite"]) == (action, rewrite), output
        if action == "kept":
            assert record["reason"] == REASON_SUSPECT_KEPT and record["spans"] == []
        else:
            assert record["spans"][0]["after"]["toxicity"] == 0.0
    # over the threshold, the same hardly-safer rewrite is spliced in and flagged, as before
    [unsafe] = Debiaser(
        ScriptedEngine(["you idiot, jerk"]), judge=GradedJudge(), prompt_style="mbias", settings=settings
    ).debias(["fix it, idiot"])
    assert unsafe["action"] == "flagged" and unsafe["rewrite"] == "you idiot, jerk"


def test_a_suspect_that_holds_code_is_kept_and_one_judged_unsafe_is_flagged():
    """Neither is sent to the model; only a text over the threshold is reported as flagged."""
    settings = DebiasSettings(screen_margin=0.5, screen_margin_heads=("toxicity",), retries=0)
    for text, action in (("run `make`, jerk", "kept"), ("run `make`, idiot", "flagged")):
        engine = ScriptedEngine(["never used"])
        debiaser = Debiaser(engine, judge=GradedJudge(), prompt_style="mbias", settings=settings)
        [record] = debiaser.debias([text])
        assert engine.calls == [] and (record["action"], record["rewrite"]) == (action, text)
    unscreened = DebiasSettings(screen=False)
    debiaser = Debiaser(ScriptedEngine(["x"]), judge=GradedJudge(), prompt_style="mbias", settings=unscreened)
    [record] = debiaser.debias(["run `make` now"])  # no screen ran; clean and holding code: kept
    assert (record["action"], record["spans"]) == ("kept", [])


class TwoStageEngine(ScriptedEngine):
    """Greedy calls copy the text (a copy of a toxic text fails the judge); sampled calls return
    ``sampled``. Which texts get retried, and how, is then visible in ``calls``."""

    def __init__(self, sampled):
        super().__init__(sampled)
        self.temperatures = []

    def generate(self, prompts, *, max_new_tokens=128, temperature=0.0, n=1):
        self.calls.append(prompts)
        self.temperatures.append(temperature)
        if temperature == 0:
            return [[p.split("Text: ")[-1].split("\n")[0]] * n for p in prompts]
        return [self.outputs[:n] for _ in prompts]


def test_debiaser_retries_only_failed_texts_with_sampling():
    engine = TwoStageEngine(["idiot", "please fix the printer", "x"])
    settings = DebiasSettings(retries=3, screen=False)
    debiaser = Debiaser(engine, judge=FixedJudge(), prompt_style="mbias", settings=settings)
    fixed, passed = debiaser.debias(["you idiot fix the printer", "fix the printer now"])
    assert engine.temperatures == [0.0, DebiasSettings().sample_temperature]
    assert engine.calls[1] == [engine.calls[0][0]]  # only the text whose greedy rewrite failed
    assert fixed["action"] == "rewritten" and fixed["rewrite"] == "please fix the printer"
    assert fixed["retried"] is True and "reason" not in fixed
    assert fixed["candidates"][0] == "you idiot fix the printer"  # the greedy one stays a candidate
    assert passed["action"] == "kept" and "retried" not in passed

    still = TwoStageEngine(["idiot", "idiot!"])
    two = DebiasSettings(retries=2)
    [record] = Debiaser(still, judge=FixedJudge(), prompt_style="mbias", settings=two).debias(["you idiot"])
    assert record["action"] == "flagged" and record["reason"] == "no candidate judged safe"
    assert record["retried"] is True and record["rewrite"].strip()

    off = TwoStageEngine(["calm"])  # the default: a failed text stays flagged, no second call
    [flagged] = Debiaser(off, judge=FixedJudge(), prompt_style="mbias").debias(["idiot"])
    assert off.temperatures == [0.0] and flagged["action"] == "flagged" and "retried" not in flagged


def test_escalation_engine_rewrites_only_what_the_first_left_flagged(monkeypatch):
    """A unit the engine fails on goes to the escalation engine (loaded on first need, with its own
    prompt style) and the judge chooses among both engines' candidates; a run where nothing fails
    never loads it, and a worse second answer changes nothing."""
    from rich.console import Console

    import mbias.intervene as intervene
    from mbias.commands.explain import explain_record

    loaded = []

    def load(spec, **options):
        loaded.append(spec)
        return second

    monkeypatch.setattr(intervene, "load_engine", load)
    second = ScriptedEngine(["please fix the printer"])
    settings = DebiasSettings(escalate="hf:larger-model")
    debiaser = Debiaser(
        TwoStageEngine(["unused"]), judge=FixedJudge(), prompt_style="mbias", settings=settings
    )
    assert debiaser.debias(["fix the printer now"])[0]["action"] == "kept" and loaded == []
    fixed, clean = debiaser.debias(["you idiot fix the printer", "the printer is fixed"])
    assert loaded == ["hf:larger-model"]
    assert second.calls == [[render("you idiot fix the printer", "auto")]]  # the failed unit, its own prompt
    assert (fixed["action"], fixed["rewrite"], fixed["escalated"]) == (
        "rewritten",
        "please fix the printer",
        True,
    )
    assert fixed["spans"][0]["escalated"] is True and "escalated" not in clean
    shown = Console(record=True, width=200)
    explain_record(fixed, console=shown)  # --explain says which engine wrote the span
    assert "escalation" in shown.export_text()

    second.outputs = ["idiot, fix it"]  # the larger engine fails too: the least unsafe, most similar stays
    [still] = debiaser.debias(["you idiot"])
    assert (still["action"], still["rewrite"]) == ("flagged", "you idiot")
    assert "escalated" not in still and "escalated" not in still["spans"][0]  # kept: the first engine's
    shown = Console(record=True, width=200)
    explain_record(still, console=shown)
    assert "escalation" not in shown.export_text()
    assert loaded == ["hf:larger-model"]  # loaded once per Debiaser
    with pytest.raises(MbiasError, match="escalate names no engine"):
        Debiaser(ScriptedEngine(["x"]), judge=FixedJudge(), settings=DebiasSettings(escalate=" "))
    with pytest.raises(MbiasError, match="unknown engine spec 'nonexistent'"):  # before any text is read
        Debiaser(ScriptedEngine(["x"]), judge=FixedJudge(), settings=DebiasSettings(escalate="nonexistent"))


def test_retries_run_before_escalation_and_every_candidate_reaches_the_choice(monkeypatch):
    """With both knobs, the first engine's samples come first; only a unit they leave flagged goes
    to the second engine, and the judge chooses among greedy, sampled and escalated candidates."""
    import mbias.intervene as intervene

    second = ScriptedEngine(["please fix the printer"])
    monkeypatch.setattr(intervene, "load_engine", lambda spec, **options: second)
    first = TwoStageEngine(["idiot printer", "fix it idiot"])  # sampled candidates fail the judge too
    settings = DebiasSettings(retries=2, escalate="hf:larger-model", candidates=1)
    debiaser = Debiaser(first, judge=FixedJudge(), prompt_style="mbias", settings=settings)
    [record] = debiaser.debias(["you idiot fix the printer"])
    assert first.temperatures == [0.0, DebiasSettings().sample_temperature] and len(second.calls) == 1
    kept = (record["rewrite"], record["retried"], record["escalated"])
    assert kept == ("please fix the printer", True, True)
    greedy, *samples = ["you idiot fix the printer", "idiot printer", "fix it idiot"]
    assert record["candidates"] == [greedy, *samples, "please fix the printer"]

    sampled = TwoStageEngine(["please fix the printer"])  # a sample passes: nothing is escalated
    second.calls.clear()
    debiaser = Debiaser(sampled, judge=FixedJudge(), prompt_style="mbias", settings=settings)
    [record] = debiaser.debias(["you idiot fix the printer"])
    assert second.calls == [] and record["retried"] is True and "escalated" not in record


def test_a_rewrite_the_screen_would_still_catch_is_escalated_and_a_clear_one_preferred(monkeypatch):
    """A flagged unit whose rewrite passes the threshold but not the screen's margin ("lazy":
    bias 0.3 of a 0.5 threshold, margin 0.5) goes to the second engine; its candidate the screen
    lets through wins over the first engine's more similar one. A second answer no clearer
    changes nothing, and a suspect (under the threshold already) is never escalated."""
    import mbias.intervene as intervene

    second = ScriptedEngine(["please fix the printer"])
    monkeypatch.setattr(intervene, "load_engine", lambda spec, **options: second)
    record, _ = two_head_debias("you scum fix the printer", "you lazy fix the printer")
    assert (record["action"], record["rewrite"]) == ("rewritten", "you lazy fix the printer")  # alone
    record, _ = two_head_debias("you scum fix the printer", "you lazy fix the printer", escalate="hf:larger")
    assert (record["rewrite"], record["escalated"]) == ("please fix the printer", True)
    assert second.calls == [[render("you scum fix the printer", "auto")]]

    second.outputs, second.calls = ["you lazy one, fix the printer"], []  # caught as well: the first stays
    record, _ = two_head_debias("you scum fix the printer", "you lazy fix the printer", escalate="hf:larger")
    assert (record["rewrite"], "escalated" in record) == ("you lazy fix the printer", False)
    assert len(second.calls) == 1

    second.calls = []  # a suspect's rewrite must clear the margin to be kept: nothing is doubtful
    record, _ = two_head_debias("lazy people rent flats", "people rent flats", escalate="hf:larger")
    assert (record["rewrite"], second.calls) == ("people rent flats", [])
    # screen off: a clean text's rewrite into the band is no doubtful rewrite of a flagged one
    record, _ = two_head_debias(
        "people rent flats", "lazy people rent flats", escalate="hf:larger", screen=False
    )
    assert (record["rewrite"], second.calls) == ("lazy people rent flats", [])
    # no judge: nothing is verified, so nothing is doubtful either
    engine = ScriptedEngine(["you lazy fix the printer"])
    settings = DebiasSettings(escalate="hf:larger", retries=0)
    [record] = Debiaser(engine, judge=None, prompt_style="mbias", settings=settings).debias(["you scum"])
    assert (record["rewrite"], second.calls) == ("you lazy fix the printer", [])


def test_a_second_answer_no_better_leaves_the_first_choice_as_it_was(monkeypatch):
    """Preferring a candidate the screen lets through decides between the two engines' answers,
    not among the first engine's own: when the second engine's answer is not kept, the output is
    what it was without escalation."""
    import mbias.intervene as intervene

    second = ScriptedEngine(["lazy one"])  # caught by the margin, and it lost the message
    monkeypatch.setattr(intervene, "load_engine", lambda spec, **options: second)
    first = ["you lazy fix the printer", "fix the printer"]  # doubtful and similar; clear, less similar
    outputs = []
    for escalate in (None, "hf:larger"):
        settings = DebiasSettings(screen_margin=0.5, retries=0, candidates=2, escalate=escalate)
        debiaser = Debiaser(
            ScriptedEngine(first), judge=TwoHeadJudge(), prompt_style="mbias", settings=settings
        )
        [record] = debiaser.debias(["you scum fix the printer"])
        outputs.append((record["rewrite"], record["action"], "escalated" in record))
    # one escalation: the second engine's greedy rewrite and one sample
    assert outputs == [("you lazy fix the printer", "rewritten", False)] * 2 and len(second.calls) == 2


def test_an_escalation_engine_that_cannot_load_stops_the_job_once(monkeypatch):
    """Not a record's fault: the batch is not retried record by record (each retry a new load),
    the job stops with the load's one-line reason, and a later call does not try loading again."""
    import mbias.intervene as intervene
    from mbias.intervene import EscalationUnavailable

    tries = []

    def load(spec, **options):
        tries.append(spec)
        raise MbiasError("the 1.5b extra is not installed\nsecond line")

    monkeypatch.setattr(intervene, "load_engine", load)
    settings = DebiasSettings(escalate="hf:larger-model")
    debiaser = Debiaser(TwoStageEngine(["x"]), judge=FixedJudge(), prompt_style="mbias", settings=settings)
    texts = ["you idiot", "the printer is fixed", "idiot again"]
    one_line = r"^--escalate hf:larger-model: the 1.5b extra is not installed$"
    with pytest.raises(EscalationUnavailable, match=one_line):
        debiaser.debias(texts)
    with pytest.raises(EscalationUnavailable):
        debiaser.debias(["you idiot"])
    assert tries == ["hf:larger-model"]
    assert debiaser.debias(["the printer is fixed"])[0]["action"] == "kept"  # clean text still flows
    # nor when another record of the batch fails too: the record-by-record retry does not flag it
    failing = _FailsOn("POISON")
    failing.outputs = ["x"]
    debiaser = Debiaser(failing, judge=FixedJudge(), prompt_style="mbias", settings=settings)
    with pytest.raises(EscalationUnavailable):
        debiaser.process_batch(as_records(["idiot POISON", "you idiot"]))


def test_debiaser_flags_empty_and_too_long_inputs():
    debiaser = Debiaser(
        ScriptedEngine(["ok"]), prompt_style="mbias", settings=DebiasSettings(max_input_tokens=20)
    )
    empty, long, fine = debiaser.debias(["  ", "word " * 400, "short text"])
    assert empty["action"] == "flagged" and "empty" in empty["reason"]
    assert long["action"] == "flagged" and "limit" in long["reason"]
    assert fine["rewrite"] == "ok"
    with pytest.raises(MbiasError, match="tokens"):
        debiaser.check_length("word " * 400)


def test_only_sentences_sent_to_the_model_are_counted_in_tokens():
    """Counting every clean sentence with the model's tokenizer cost 2 ms an answer: a sentence
    whose UTF-8 length proves it fits is counted only when it is rewritten."""

    class CountingTokenizer:
        def __init__(self):
            self.texts = []

        def __call__(self, text, add_special_tokens=False):
            self.texts.append(text)
            return {"input_ids": text.split()}

    engine = ScriptedEngine(["Someone fixed it."])
    engine.tokenizer, engine.context_window = CountingTokenizer(), 1000
    debiaser = Debiaser(engine, judge=FixedJudge(), prompt_style="mbias")
    [record] = debiaser.debias(["The printer works again today. You idiot fixed it."])
    assert record["rewrite"] == "The printer works again today. Someone fixed it."
    assert engine.tokenizer.texts == ["You idiot fixed it."]


def test_records_keep_extra_fields_through_debias():
    debiaser = Debiaser(ScriptedEngine(["calm words"]), prompt_style="mbias")
    [out] = debiaser.debias([{"id": "7", "text": "angry words", "group": "women"}])
    assert out["group"] == "women" and out["id"] == "7"
    json.dumps(out)


def test_profile_charges_each_second_to_the_innermost_stage():
    import time

    from mbias import profile

    profile.reset()
    with profile.stage("outer"):
        time.sleep(0.05)
        with profile.stage("inner"):
            time.sleep(0.1)
        time.sleep(0.05)
    with profile.stage("inner"):
        pass
    seen = profile.snapshot()
    assert seen["inner"][1] == 2 and seen["outer"][1] == 1
    assert 0.09 < seen["inner"][0] < 0.2 and 0.09 < seen["outer"][0] < 0.2  # outer excludes inner
    profile.reset()
    assert profile.snapshot() == {}


def test_the_debiaser_times_its_stages():
    from mbias import profile

    profile.reset()
    debiaser = Debiaser(ScriptedEngine(["a calm rewrite"]), judge=FixedJudge(), prompt_style="mbias")
    debiaser.debias(["you idiot. The printer is slow."])
    stages = profile.snapshot()
    assert {"segment", "screen", "generate", "verify", "splice"} <= set(stages)
    assert stages["generate"][1] == 1  # one engine call for the batch


class _FailsOn(ScriptedEngine):
    """Raises on any batch holding a prompt with ``poison`` in it (every batch when it is empty)."""

    def __init__(self, poison: str):
        super().__init__(["please fix the printer"])
        self.poison = poison

    def generate(self, prompts, **kwargs):
        if any(self.poison in p for p in prompts):
            raise RuntimeError(f"decode failed on {self.poison!r}")
        return super().generate(prompts, **kwargs)


def test_a_record_that_fails_alone_is_flagged_and_the_rest_of_its_batch_is_rewritten():
    debiaser = Debiaser(_FailsOn("POISON"), judge=FixedJudge(), prompt_style="mbias")
    texts = ["you idiot fix the printer", "idiot POISON", "the printer is slow", "idiot fix the printer"]
    records = debiaser.debias(texts)
    assert [r["text"] for r in records] == texts  # order and every row kept
    assert [r["action"] for r in records] == ["rewritten", "flagged", "kept", "rewritten"]
    assert records[1]["rewrite"] == texts[1]  # nothing lost: the original text comes back
    assert records[1]["reason"] == "error: RuntimeError: decode failed on 'POISON'"


def test_an_engine_that_fails_on_everything_stops_the_job():
    debiaser = Debiaser(_FailsOn(""), judge=FixedJudge(), prompt_style="mbias")
    with pytest.raises(RuntimeError, match="decode failed"):
        debiaser.debias(["you idiot, fix it", "another idiot"])


def test_flagged_sentences_of_mostly_clean_batches_wait_to_share_one_generate_call(monkeypatch):
    """Batches are screened one by one, but their few flagged units wait until the decoder's rows
    fill (batch_size units) or MAX_WAITING_BATCHES batches have waited: then one call."""
    from mbias import intervene

    engine = ScriptedEngine(["a calm rewrite"])
    debiaser = Debiaser(
        engine, judge=FixedJudge(), prompt_style="mbias", settings=DebiasSettings(batch_size=4)
    )
    # one flagged record in every batch of 4: three batches wait, then all three units go together
    texts = ["you idiot", "The printer is slow.", "It rains.", "Tea is hot."] * 3
    seen = []
    for batch in debiaser.stream(as_records(texts)):
        seen.append((len(batch), len(engine.calls)))
    assert [len(call) for call in engine.calls] == [3]
    assert seen == [(4, 1), (4, 1), (4, 1)]  # each batch still comes back on its own, in order
    # four flagged units fill the rows: the call happens before the next batch is screened
    engine.calls.clear()
    records = debiaser.debias(["idiot a", "idiot b", "idiot c", "idiot d", "idiot e", "a calm day"])
    assert [len(call) for call in engine.calls] == [4, 1]
    assert [r["action"] == "kept" for r in records] == [False] * 5 + [True]
    # a batch with nothing to rewrite is not held back behind the ones that wait
    engine.calls.clear()
    seen = []
    clean = ["It rains.", "Tea is hot.", "Calm.", "Sun."]
    for batch in debiaser.stream(as_records(clean + ["idiot", "a", "b", "c"] + clean)):
        seen.append((batch[0]["text"], len(engine.calls)))
    assert seen == [("It rains.", 0), ("idiot", 1), ("It rains.", 1)]  # the last waits behind the second
    # a bound on the records held unwritten, whether or not the rows fill
    engine.calls.clear()
    monkeypatch.setattr(intervene, "MAX_WAITING_BATCHES", 2)
    debiaser.debias(["The printer is slow.", "It rains.", "Tea is hot.", "idiot"] * 5)
    assert [len(call) for call in engine.calls] == [2, 2, 1]


def test_a_record_that_fails_while_batches_wait_is_flagged_alone_and_order_is_kept():
    debiaser = Debiaser(
        _FailsOn("POISON"), judge=FixedJudge(), prompt_style="mbias", settings=DebiasSettings(batch_size=2)
    )
    texts = ["idiot fix the printer", "it rains", "idiot POISON", "calm", "you idiot fix the printer", "tea"]
    records = debiaser.debias(texts)
    assert [r["text"] for r in records] == texts
    assert [r["action"] for r in records] == ["rewritten", "kept", "flagged", "kept", "rewritten", "kept"]
    assert records[2]["reason"].startswith("error: RuntimeError")
