"""`mbias debias` as a user runs it: text, stdin, files, resume after a kill, and every bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from mbias.records import read_records


def run_cli(*args: str, stdin: bytes | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mbias.cli", *args],
        input=stdin,
        capture_output=True,
        env={**os.environ, "MBIAS_JUDGE": "none", **(env or {})},
        timeout=300,
    )


@pytest.fixture
def engine(tiny_model_dir) -> list[str]:
    return ["--engine", f"hf:{tiny_model_dir}", "--prompt-style", "mbias", "--max-new-tokens", "4"]


def test_text_and_stdin_modes(engine):
    single = run_cli("debias", *engine, "--format", "json", "Some rude text")
    assert single.returncode == 0, single.stderr
    record = json.loads(single.stdout)
    assert record["text"] == "Some rude text" and record["rewrite"].strip()
    piped = run_cli("debias", *engine, "-", stdin=b"first line\n\nsecond line\n")
    assert piped.returncode == 0, piped.stderr
    assert len(piped.stdout.decode().strip().splitlines()) == 2


def test_file_mode_writes_every_row_with_fields(tmp_path, engine):
    source = tmp_path / "in.csv"
    source.write_text("biased_text,group\nalpha text,women\nbeta text,age\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    result = run_cli(
        "debias", *engine, "--input", str(source), "--output", str(out), "--column", "biased_text"
    )
    assert result.returncode == 0, result.stderr
    rows = read_records(out)
    assert [r["text"] for r in rows] == ["alpha text", "beta text"]
    assert [r["group"] for r in rows] == ["women", "age"]
    assert all(r["rewrite"].strip() and r["action"] in {"kept", "rewritten", "flagged"} for r in rows)
    actions = [r["action"] for r in rows]
    summary = ", ".join(f"{actions.count(a)} {a}" for a in sorted(set(actions)))
    assert f"out.jsonl: {summary}" in " ".join(result.stderr.decode().split())  # every row counted once


def test_resume_after_killed_run_loses_and_duplicates_nothing(tmp_path, engine):
    source = tmp_path / "in.jsonl"
    source.write_text(
        "".join(json.dumps({"id": f"r{i}", "text": f"text number {i}"}) + "\n" for i in range(40))
    )
    out = tmp_path / "out.jsonl"
    args = [
        sys.executable,
        "-m",
        "mbias.cli",
        "debias",
        *engine,
        "--batch-size",
        "2",
        "-i",
        str(source),
        "-o",
        str(out),
    ]
    proc = subprocess.Popen(args, env={**os.environ, "MBIAS_JUDGE": "none"}, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 4):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = out.read_text().splitlines()
    assert 4 <= len(written) < 40, "the kill should land mid-run"
    again = run_cli("debias", *engine, "--batch-size", "8", "-i", str(source), "-o", str(out))
    assert again.returncode == 2 and b"--resume" in again.stderr  # never overwrites silently
    resumed = run_cli("debias", *engine, "--batch-size", "8", "-i", str(source), "-o", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    ids = [r["id"] for r in read_records(out)]
    assert sorted(ids) == sorted(f"r{i}" for i in range(40)) and len(ids) == 40


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        (None, ["--input", "{tmp}/missing.csv"], "no such file"),
        ("text\n", ["--input", "{tmp}/in.csv"], "no rows"),
        ("a,b\n1,2\n", ["--input", "{tmp}/in.csv", "--column", "text"], "no column 'text'"),
        (b"text\n\xc3\x28 bad\n", ["--input", "{tmp}/in.csv"], "not UTF-8"),
        (None, ["--engine", "warp:drive", "hello"], "unknown engine scheme"),
        (None, ["--engine", "openai:http://127.0.0.1:9/v1#m", "hello"], "cannot be reached"),
        (None, ["hello", "--input", "x.csv"], "either a TEXT"),
        (None, [""], "empty"),
        (None, ["--batch-size", "0", "hello"], "greater than or equal to 1"),
        (None, ["--granularity", "word", "hello"], "choose one of auto, sentence, text"),
        (None, ["--explain", "--format", "json", "hello"], "--explain prints a table"),
        (None, ["--no-such-option", "hello"], "No such option"),
        ("text\na\n", ["-i", "{tmp}/in.csv", "-o", "{tmp}/in.csv", "--resume"], "is the input file"),
        ("text\na\n", ["-i", "{tmp}/in.csv", "-o", "{tmp}/in.csv/o.jsonl"], "is a file, not a folder"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, setup, args, message, engine):
    if setup is not None:
        data = setup.encode() if isinstance(setup, str) else setup
        (tmp_path / "in.csv").write_bytes(data)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "--engine" not in argv:
        argv = [*engine, *argv]
    result = run_cli("debias", *argv)
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_non_utf8_stdin_and_too_long_text(engine):
    bad = run_cli("debias", *engine, "-", stdin=b"\xff\xfe\x00broken")
    assert bad.returncode == 2 and b"not UTF-8" in bad.stderr
    long = run_cli("debias", *engine, "--max-input-tokens", "50", "word " * 500)
    assert long.returncode == 2 and b"limit" in long.stderr and b"Traceback" not in long.stderr


ANSWER = """## Team tips

Plan the sprint on Monday. You stupid idiots never finish anything, so stop wasting my time.
Review the board daily.

```python
print("you stupid idiots")  # code is never sent to the model
```

- Keep standups short
"""


@pytest.mark.integration
def test_long_answer_with_the_embedded_model_and_judge():
    """The real default engine and judge on a markdown answer: the insult is screened out of its
    paragraph and rewritten there, and code, list and headings come back byte for byte."""
    result = run_cli("debias", "--format", "json", ANSWER, env={"MBIAS_JUDGE": "embedded"})
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    rewrite = record["rewrite"]
    for kept in (
        '```python\nprint("you stupid idiots")  # code is never sent to the model\n```',
        "- Keep standups short\n",
        "## Team tips\n",
    ):
        assert kept in rewrite
    changed = [s for s in record["spans"] if s["rewrite"] != s["original"]]
    assert [s["original"] for s in changed] == [
        "You stupid idiots never finish anything, so stop wasting my time."
    ]
    span = changed[0]
    assert rewrite[span["output_start"] : span["output_end"]] == span["rewrite"]
    assert rewrite[: span["output_start"]] == ANSWER[: span["start"]]
    assert rewrite[span["output_end"] :] == ANSWER[span["end"] :]
    assert (
        span["category"] == "insult or profanity" and span["before"]["toxicity"] > span["after"]["toxicity"]
    )
    explained = run_cli("debias", "--explain", ANSWER, env={"MBIAS_JUDGE": "embedded"})
    assert explained.returncode == 0, explained.stderr
    assert b"insult" in explained.stdout and b"Plan the sprint on Monday." in explained.stdout


@pytest.mark.integration
def test_screen_margin_decides_whether_a_suspect_reaches_the_model(engine):
    """A sentence under the bias threshold but over 0.35 of it goes to the model by default and
    passes untouched at --screen-margin 1.0 (only flagged sentences)."""
    from mbias.judges.embedded import EmbeddedJudge

    judge = EmbeddedJudge()
    candidates = [
        "Young people today don't know the meaning of hard work.",
        "A man should always have the final say in the house.",
        "My son wants a doll for his birthday, I'm worried he's turning soft.",
        "Anyone who needs therapy is weak.",
    ]
    thresholds = judge.thresholds
    suspects = [
        text
        for text, score in zip(candidates, judge.score(candidates))
        if score["toxicity"] < thresholds["toxicity"]
        and 0.35 * thresholds["bias"] <= score["bias"] < thresholds["bias"]
    ]
    assert suspects, "none of the sentences is a suspect for this judge: pick new ones"
    reasons = {}
    for margin in ("0.35", "1.0"):
        result = run_cli(
            "debias",
            *engine,
            "--format",
            "json",
            "--screen-margin",
            margin,
            suspects[0],
            env={"MBIAS_JUDGE": "embedded"},
        )
        assert result.returncode == 0, result.stderr
        reasons[margin] = json.loads(result.stdout).get("reason")
    assert reasons["1.0"] == "input judged clean"
    assert reasons["0.35"] != "input judged clean"
    bad = run_cli("debias", *engine, "--screen-margin", "0", "text", env={"MBIAS_JUDGE": "embedded"})
    assert bad.returncode != 0 and b"screen_margin must be in (0, 1]" in bad.stderr


def test_ctrl_c_says_the_rows_written_are_kept_and_how_to_go_on(tmp_path, engine):
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"id": f"r{i}", "text": f"text {i}"}) + "\n" for i in range(60)))
    out = tmp_path / "out.jsonl"
    args = [sys.executable, "-m", "mbias.cli", "debias", *engine, "--batch-size", "2", "-i", str(source)]
    proc = subprocess.Popen(
        [*args, "-o", str(out)], env={**os.environ, "MBIAS_JUDGE": "none"}, stderr=subprocess.PIPE
    )
    deadline = time.time() + 240
    while time.time() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "mbias: interrupted: rows already written are kept; rerun with --resume" in err.decode()
    assert "Traceback" not in err.decode()
