"""The demographic probe: held-out sampling, per-group arithmetic, spread; `mbias probe` end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import pytest

from mbias import config
from mbias.eval.probes import STATEMENTS, run_probe, sample_statements, spread
from mbias.judges import head_margin
from mbias.splits import is_heldout

CALM = "A calm statement."


def test_sample_is_held_out_seeded_and_capped():
    path = config.data_dir() / STATEMENTS
    first = sample_statements(path, 3, seed=7)
    assert first == sample_statements(path, 3, seed=7)
    assert first != sample_statements(path, 3, seed=8)
    assert all(is_heldout(r["text"]) for r in first)
    counts = Counter((r["group"], r["label"]) for r in first)
    assert max(counts.values()) == 3 and counts[("lgbtq", "neutral")] == 3
    assert ("trans", "neutral") not in counts  # ToxiGen has no neutral trans statements
    assert len({r["id"] for r in first}) == len(first)


def test_spread_over_groups_that_have_the_figure():
    groups = {"a": {"toxicity_after": 0.1}, "b": {"toxicity_after": 0.5}, "c": {"toxicity_after": None}}
    result = spread(groups)["toxicity_after"]
    assert result["max_minus_min"] == pytest.approx(0.4)
    assert result["std"] == pytest.approx(0.2)
    assert (result["max_group"], result["min_group"], result["groups"]) == ("b", "a", 2)


class RuleEngine:
    """Rewrites the sentences of the texts it is told to (to CALM) and echoes every other one, with a
    full stop added (the Debiaser sends a statement of several sentences one sentence at a time)."""

    name = "rules"
    tokenizer = None
    context_window = None

    def __init__(self, rewrite: set[str]):
        self.rewrite = rewrite

    def generate(self, prompts, *, max_new_tokens=128, temperature=0.0, n=1):
        texts = [p.rsplit("Text: ", 1)[1].rsplit("\nDebiased text:", 1)[0] for p in prompts]
        return [[CALM if any(t in r for r in self.rewrite) else f"{t} ."] * n for t in texts]


class CalmJudge:
    """CALM (once or repeated) is safe; everything else is toxic 0.8, biased 0.6; similarity 1 if
    echoed, else 0.25."""

    name = "calm"

    def score(self, texts):
        return [
            {"toxicity": 0.0, "bias": 0.0}
            if t and not t.replace(CALM, "").strip()
            else {"toxicity": 0.8, "bias": 0.6}
            for t in texts
        ]

    def similarity(self, sources, outputs):
        return [1.0 if o in (s, f"{s} .") else 0.25 for s, o in zip(sources, outputs)]

    def is_unsafe(self, scores, margin=1.0):
        return any(v >= 0.5 * head_margin(margin, k) for k, v in scores.items())


def test_a_resumed_probe_rewrites_only_what_the_first_run_left():
    sample = sample_statements(config.data_dir() / STATEMENTS, 1, seed=0)
    engine = RuleEngine({r["text"] for r in sample})
    first = run_probe(engine, CalmJudge(), config.data_dir(), per_group=1, seed=0)
    asked = []
    engine.generate = lambda prompts, **kw: asked.extend(prompts) or [[CALM] for _ in prompts]
    written = []
    resumed = run_probe(
        engine,
        CalmJudge(),
        config.data_dir(),
        per_group=1,
        seed=0,
        done=first.rows[:-2],
        on_rows=written.extend,
    )
    assert len(asked) == 2 and written == resumed.rows[-2:]  # only the two rows the first run left
    assert resumed.rows[:-2] == first.rows[:-2] and len(resumed.rows) == len(first.rows)


def test_probe_figures_per_group():
    sample = sample_statements(config.data_dir() / STATEMENTS, 2, seed=0)
    rewrite = {r["text"] for r in sample if r["label"] == "hate" or r["group"] == "women"}
    result = run_probe(RuleEngine(rewrite), CalmJudge(), config.data_dir(), per_group=2, seed=0)
    assert len(result.rows) == len(sample) and all(r["rewrite"] for r in result.rows)
    asian, women, trans = result.groups["asian"], result.groups["women"], result.groups["trans"]
    assert asian["toxicity_before"] == pytest.approx(0.8) and asian["toxicity_after"] == 0.0
    assert asian["bias_reduction_pct"] == pytest.approx(100.0)
    assert asian["neutral_changed_pct"] == 0.0  # an added full stop is not an intervention
    assert asian["neutral_similarity_lost"] == 0.0
    assert women["neutral_changed_pct"] == 100.0 and women["neutral_similarity_lost"] == pytest.approx(0.75)
    assert trans["n_neutral"] == 0 and "neutral_changed_pct" not in trans
    assert result.groups["chinese"]["n_hate"] == 0  # no held-out hateful statement for this group
    over = result.spread["neutral_changed_pct"]
    assert over["max_group"] == "women" and over["max_minus_min"] == 100.0
    assert result.spread["toxicity_after"]["max_minus_min"] == 0.0
    women_neutral = sum(r["group"] == "women" and r["label"] == "neutral" for r in result.rows)
    neutral = sum(r["label"] == "neutral" for r in result.rows)
    assert result.overall["neutral_changed_pct"] == pytest.approx(100.0 * women_neutral / neutral)
    assert result.overall["toxicity_reduction_pct"] == pytest.approx(100.0)
    table = result.markdown()
    assert table.count("\n") == len(result.groups) + 4  # header, separator, groups, all, two spread rows
    assert "| women |" in table and "100.0%" in table


@pytest.mark.integration
def test_cli_probe_end_to_end(tmp_path, tiny_model_dir):
    out = tmp_path / "probe"
    args = ["probe", "--engine", f"hf:{tiny_model_dir}", "--per-group", "1", "--max-new-tokens", "8"]
    result = subprocess.run(
        [sys.executable, "-m", "mbias.cli", *args, "--seed", "3", "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert {p.name for p in out.iterdir()} == {
        "rows.jsonl",
        "probe-run.json",
        "probe.json",
        "probe.md",
        "probe.png",
        "report.html",
    }
    summary = json.loads((out / "probe.json").read_text())
    expected = sample_statements(config.data_dir() / STATEMENTS, 1, seed=3)
    assert summary["settings"]["statements"] == len(expected)
    assert set(summary["groups"]) == {r["group"] for r in expected}
    for values in summary["groups"].values():
        if values["n_hate"]:
            assert 0.0 <= values["toxicity_before"] <= 1.0 and 0.0 <= values["toxicity_after"] <= 1.0
    assert "neutral_changed_pct" in summary["spread"]
    assert (out / "probe.png").read_bytes()[:4] == b"\x89PNG"
    assert "data:image/png;base64," in (out / "report.html").read_text()
    assert "| **spread: std** |" in result.stdout

    def again(*more: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "mbias.cli", *args, "--out", str(out), *more]
        return subprocess.run(command, capture_output=True, text=True)

    rows = (out / "rows.jsonl").read_text().splitlines()
    refused = again("--seed", "3")  # a finished run is not written over
    assert refused.returncode == 2 and "pass --resume" in refused.stderr
    other = again("--seed", "4", "--resume")
    assert other.returncode == 2 and "other settings (seed)" in other.stderr
    (out / "rows.jsonl").write_text("\n".join(rows[:3]) + "\n")  # as a run stopped after three rows
    resumed = again("--seed", "3", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert sorted((out / "rows.jsonl").read_text().splitlines()[:3]) == sorted(rows[:3])  # kept, not redone
    assert sorted(json.loads(r)["id"] for r in (out / "rows.jsonl").read_text().splitlines()) == sorted(
        json.loads(r)["id"] for r in rows
    )
    assert json.loads((out / "probe.json").read_text())["settings"]["statements"] == len(rows)
