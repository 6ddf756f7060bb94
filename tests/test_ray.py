"""`mbias debias --ray`: shards in, shards out, equal to the local path, and a kill then a resume.

The shard planning and the Parquet writer need no Ray. The job tests run on a local Ray instance
(2 CPUs, a 300 MiB object store) with the tiny random model from conftest; they are skipped where
the ``ray`` extra is not installed. Nothing here touches a GPU: ``--gpus-per-worker`` and vLLM
actors are untested on this machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from mbias.errors import MbiasError
from mbias.intervene import DebiasSettings
from mbias.records import RecordWriter
from mbias.scale.shards import Shard, find_shards, plan_shards, write_shard

MAX_NEW_TOKENS = 8
BATCH = 2


def write_corpus(directory: Path, shards: int = 4, rows: int = 5) -> dict[str, list[str]]:
    """Shards in every format the job reads (JSONL, CSV, Parquet), with an extra column and a
    multi-sentence text per shard; returns each shard's ids."""
    directory.mkdir(parents=True, exist_ok=True)
    ids: dict[str, list[str]] = {}
    for s in range(shards):
        records = [
            {
                "id": f"s{s}r{i}",
                "text": f"Women are bad drivers, number {i}. Old people are slow with computers {s}."
                if i % 2
                else f"This stupid manager ruined schedule {s}-{i}.",
                "group": "07" if i % 3 == 0 else "age",  # a CSV must keep "07" a string, as locally
            }
            for i in range(rows)
        ]
        stem = f"part-{s:02d}"
        kind = ("jsonl", "csv", "parquet")[s % 3]
        path = directory / f"{stem}.{kind}"
        if kind == "jsonl":
            path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        elif kind == "csv":
            pd.DataFrame(records).to_csv(path, index=False)
        else:
            pd.DataFrame(records).to_parquet(path, index=False)
        ids[stem] = [r["id"] for r in records]
    return ids


def local_outputs(
    model: Path, sources: list[Path], directory: Path, batch: int = BATCH
) -> dict[str, pd.DataFrame]:
    """Each shard through the local path, `mbias debias -i SHARD -o OUT.parquet`, in-process."""
    from mbias.commands.debias import debias

    frames = {}
    for source in sources:
        out = directory / f"{source.stem}.parquet"
        debias(
            input=str(source),
            output=str(out),
            engine=f"hf:{model}",
            judge="none",
            prompt_style="mbias",
            batch_size=batch,
            max_new_tokens=MAX_NEW_TOKENS,
        )
        frames[source.stem] = pd.read_parquet(out)
    return frames


def ray_outputs(directory: Path) -> dict[str, pd.DataFrame]:
    return {path.stem: pd.read_parquet(path) for path in sorted(directory.glob("*.parquet"))}


def assert_same_as_local(got: dict[str, pd.DataFrame], expected: dict[str, pd.DataFrame]) -> None:
    assert sorted(got) == sorted(expected)
    for stem, frame in expected.items():
        pd.testing.assert_frame_equal(got[stem], frame, obj=stem)


def assert_every_id_once(got: dict[str, pd.DataFrame], ids: dict[str, list[str]]) -> None:
    for stem, expected in ids.items():
        assert list(got[stem]["id"]) == expected, stem  # all of them, once, in input order


# -- shard planning and writing (no Ray) ---------------------------------------------------------


def test_find_shards_lists_a_directory_or_a_pattern(tmp_path):
    for name in ("b.jsonl", "a.csv", "c.parquet", ".hidden.jsonl", "notes.txt"):
        (tmp_path / name).write_text("x")
    assert [p.name for p in find_shards(str(tmp_path))] == ["a.csv", "b.jsonl", "c.parquet"]
    assert [p.name for p in find_shards(str(tmp_path / "*.jsonl"))] == ["b.jsonl"]
    with pytest.raises(MbiasError, match="no file matches"):
        find_shards(str(tmp_path / "*.tsv"))
    with pytest.raises(MbiasError, match="unsupported file type"):
        find_shards(str(tmp_path / "*.txt"))


def test_plan_refuses_to_overwrite_and_resumes_what_is_missing(tmp_path):
    source = tmp_path / "in"
    write_corpus(source, shards=3, rows=1)
    out = tmp_path / "out"
    plan = plan_shards(str(source), out, resume=False)
    assert [s.output.name for s in plan.todo] == ["part-00.parquet", "part-01.parquet", "part-02.parquet"]
    (out / "part-01.parquet").write_bytes(b"done")
    plan.todo[2].partial.write_bytes(b"half a shard")  # a killed write
    with pytest.raises(MbiasError, match="not empty; pass --resume"):
        plan_shards(str(source), out, resume=False)
    resumed = plan_shards(str(source), out, resume=True)
    assert [s.output.name for s in resumed.todo] == ["part-00.parquet", "part-02.parquet"]
    assert [s.output.name for s in resumed.done] == ["part-01.parquet"]
    assert not plan.todo[2].partial.exists()
    (source / "part-00.csv").write_text("text\nsame stem, other format\n")
    with pytest.raises(MbiasError, match="would both be written to part-00.parquet"):
        plan_shards(str(source), tmp_path / "other", resume=False)


def test_shard_writer_agrees_with_the_local_parquet_writer(tmp_path):
    """Nested fields (spans with optional keys, candidates) come back the same from both writers."""
    records = [
        {
            "id": "1",
            "text": "A b.",
            "rewrite": "C d.",
            "action": "rewritten",
            "spans": [{"start": 0, "end": 4, "before": {"toxicity": 0.9}, "reason": "x"}],
            "candidates": ["C d.", "E f."],
        },
        {"id": "2", "text": "Clean.", "rewrite": "Clean.", "action": "kept", "spans": [], "similarity": 0.5},
    ]
    with RecordWriter(tmp_path / "local.parquet") as writer:
        for record in records:
            writer.write(record)
    shard = Shard(tmp_path / "in.jsonl", tmp_path / "ray.parquet")
    write_shard(shard, records)
    local, ours = pd.read_parquet(tmp_path / "local.parquet"), pd.read_parquet(shard.output)
    pd.testing.assert_frame_equal(ours, local)
    assert json.loads(ours["spans"][0]) == records[0]["spans"]  # JSON strings, as documented
    assert not shard.partial.exists()


# -- the job on a local Ray instance -------------------------------------------------------------


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(
        address="local",
        num_cpus=2,
        object_store_memory=300 * 1024**2,
        include_dashboard=False,
        log_to_driver=False,
    )
    yield ray
    ray.shutdown()


def ray_job(source: Path, out: Path, model: Path, resume: bool = False, batch: int = BATCH):
    from mbias.scale.ray_job import RayJob, run_ray_job

    settings = DebiasSettings(batch_size=batch, max_new_tokens=MAX_NEW_TOKENS)
    job = RayJob(
        input=str(source),
        output=str(out),
        engine=f"hf:{model}",
        judge=None,
        prompt_style="mbias",
        settings=settings,
        resume=resume,
        workers=2,
    )
    return run_ray_job(job)


def session_processes(session: int) -> list[int]:
    """Every process in one session: the killed CLI's Ray processes (raylet, GCS, actors)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == session:
                    found.append(int(entry))
            except OSError:
                continue
    return found


def test_killed_cli_job_resumes_without_losing_or_duplicating_rows(tmp_path, tiny_model_dir, local_ray):
    source, out = tmp_path / "in", tmp_path / "out"
    ids = write_corpus(source, shards=8, rows=6)
    command = [
        sys.executable,
        "-m",
        "mbias.cli",
        "debias",
        "--ray",
        "--workers",
        "2",
        "--engine",
        f"hf:{tiny_model_dir}",
        "--judge",
        "none",
        "--prompt-style",
        "mbias",
        "--batch-size",
        "1",  # many small chunks, so the kill lands mid-run
        "--max-new-tokens",
        str(MAX_NEW_TOKENS),
        "-i",
        str(source),
        "-o",
        str(out),
    ]
    env = {**os.environ, "RAY_DEFAULT_OBJECT_STORE_MAX_MEMORY_BYTES": str(300 * 1024**2)}
    log = (tmp_path / "stderr.txt").open("wb")
    proc = subprocess.Popen(command, env=env, stderr=log, start_new_session=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None and not list(out.glob("*.parquet")):
            time.sleep(0.05)
    finally:
        for pid in session_processes(proc.pid):  # the CLI and the Ray it started, nothing else
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()
        log.close()
    stderr = (tmp_path / "stderr.txt").read_text(errors="replace")
    assert proc.returncode == -signal.SIGKILL, stderr
    finished = sorted(out.glob("*.parquet"))
    assert 1 <= len(finished) < 8, "the kill should land mid-run"
    for path in finished:  # whatever the kill left is whole
        stem = path.stem
        assert list(pd.read_parquet(path)["id"]) == ids[stem]
    with pytest.raises(MbiasError, match="pass --resume"):
        ray_job(source, out, tiny_model_dir)
    before = {path.name: path.stat().st_mtime_ns for path in finished}
    report = ray_job(source, out, tiny_model_dir, resume=True, batch=1)
    assert report.skipped == len(finished) and len(report.written) == 8 - len(finished)
    assert {p.name: p.stat().st_mtime_ns for p in finished} == before  # finished shards untouched
    got = ray_outputs(out)
    assert_every_id_once(got, ids)
    expected = local_outputs(tiny_model_dir, find_shards(str(source)), tmp_path / "local", batch=1)
    assert_same_as_local(got, expected)  # the shards of the killed run and those of the resume
    assert not list(out.glob(".*")), "no temporary file is left behind"


def test_ray_job_equals_the_local_path_shard_for_shard(tmp_path, tiny_model_dir, local_ray):
    source, out = tmp_path / "in", tmp_path / "out"
    ids = write_corpus(source)
    report = ray_job(source, out, tiny_model_dir)
    assert report.rows == 20 and sorted(p.name for p in report.written) == [
        f"part-{s:02d}.parquet" for s in range(4)
    ]
    assert 1 <= len(report.workers) <= 2 and sum(w.rows for w in report.workers.values()) == 20
    assert all(w.peak_rss_mib > 50 for w in report.workers.values())  # a model is in there
    got = ray_outputs(out)
    assert_every_id_once(got, ids)
    assert set(got["part-01"]["group"]) == {"07", "age"}  # CSV cells stay text
    assert_same_as_local(got, local_outputs(tiny_model_dir, find_shards(str(source)), tmp_path / "local"))

    # a lost shard (deleted) and a killed write (a temporary file) are redone; nothing else is
    lost = out / "part-02.parquet"
    lost.unlink()
    (out / ".part-03.parquet.partial").write_bytes(b"half a shard")
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("*.parquet")}
    again = ray_job(source, out, tiny_model_dir, resume=True)
    assert again.written == [lost] and again.skipped == 3 and again.rows == 5
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.parquet") if p != lost} == kept
    assert_same_as_local(ray_outputs(out), got)
    assert not (out / ".part-03.parquet.partial").exists()


def test_user_errors_on_workers_are_one_line(tmp_path, tiny_model_dir, local_ray, monkeypatch, capsys):
    from mbias import cli

    source = tmp_path / "in"
    source.mkdir()
    (source / "a.jsonl").write_text('{"id": "1", "text": "fine"}\nnot json\n')
    with pytest.raises(MbiasError, match=r"a\.jsonl:2: not valid JSON"):
        ray_job(source, tmp_path / "out", tiny_model_dir)
    (source / "a.jsonl").write_text('{"id": "1", "text": "fine"}\n')
    monkeypatch.setattr(
        sys,
        "argv",
        ["mbias", "debias", "--ray", "-i", str(source), "-o", str(tmp_path / "o2"), "--engine", "warp:drive"],
    )
    with pytest.raises(SystemExit) as exited:
        cli.main()  # the model fails to load inside the actor; the CLI still prints one line
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "unknown engine scheme 'warp'" in err
    assert "Traceback" not in err and len([line for line in err.splitlines() if "mbias: error" in line]) == 1


def test_ray_options_need_ray_and_a_directory_job(tmp_path, monkeypatch, capsys):
    from mbias import cli

    for argv in (["--workers", "2", "hello"], ["--ray", "hello"], ["--ray", "-i", str(tmp_path)]):
        monkeypatch.setattr(sys, "argv", ["mbias", "debias", *argv])
        with pytest.raises(SystemExit) as exited:
            cli.main()
        assert exited.value.code == 2
        assert "--ray" in capsys.readouterr().err
