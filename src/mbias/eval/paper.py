"""Re-score the MBIAS paper's published outputs (mbias-test) and set them beside its DeepEval means.

The published means are computed here from the files' own score columns (``-1`` marks a failed
DeepEval call and is dropped, as the authors' notebook does), never copied from the paper.
DeepEval scored the 113 empty MBIAS outputs as perfectly safe; both readings are reported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mbias.errors import MbiasError
from mbias.eval.metrics import COLUMNS, SAFETY, Evaluation, evaluate, paper_table, score_inputs, summarise
from mbias.judges import Judge
from mbias.records import read_records

ORIGINAL_FILE = "train-500-biased-evaluation.csv"
ORIGINAL_SCORES = {"bias": "Original_Bias_Score", "toxicity": "Original_Toxicity_Score"}
# (name in the paper's table, file, output column); the first column is the human gold.
SYSTEMS = (
    ("Human gold", "train-500-debiased-evaluation.csv", "debiased_text"),
    ("Vanilla Mistral", "OG-model-evaliation.csv", "unbiased_text"),
    ("FT Mistral", "general-ft-evaluation.csv", "debiased_text"),
    ("MBIAS", "mbias-evaluation.csv", "debiased_text"),
)
SCORE_COLUMNS = {
    "bias": "Bias_Score",
    "toxicity": "Toxicity_Score",
    "retention": "Knowledge_Retention_Score",
    "faithfulness": "Faithfulness_Score",
    "relevancy": "AnswerRelevancy_Score",
}


def published_means(rows: list[dict[str, Any]], columns: dict[str, str]) -> dict[str, dict[str, float | int]]:
    """``{metric: {"mean": m, "n": rows kept}}`` over rows whose score is a number other than -1."""
    means = {}
    for metric, column in columns.items():
        values = []
        for row in rows:
            try:
                value = float(row.get(column))  # type: ignore[arg-type]
            except (TypeError, ValueError):
                continue
            if value != -1.0 and value == value:
                values.append(value)
        means[metric] = {"mean": sum(values) / len(values) if values else None, "n": len(values)}
    return means


@dataclass
class SystemResult:
    name: str
    file: str
    evaluation: Evaluation  # failure view: empty and refused outputs count as failures
    paper_view: dict[str, Any]  # empty outputs scored as DeepEval scored them (perfectly safe)
    published: dict[str, dict[str, float | int]]


@dataclass
class PaperRescore:
    original: dict[str, Any]  # summary whose inputs are the original texts
    published_original: dict[str, dict[str, float | int]]
    systems: list[SystemResult]

    def summary(self) -> dict[str, Any]:
        return {
            "published_original": self.published_original,
            "systems": {
                s.name: {
                    "file": s.file,
                    "failure_view": s.evaluation.summary,
                    "paper_view": s.paper_view,
                    "published": s.published,
                }
                for s in self.systems
            },
        }

    def tables(self) -> list[tuple[str, str]]:
        """(heading, markdown) pairs: ours in both views, the published means, the failure counts."""
        judge = self.systems[0].evaluation.summary["judge"]
        measure = {"retention_measure": self.systems[0].evaluation.summary["retention_measure"]}
        failure = paper_table([(s.name, s.evaluation.summary) for s in self.systems], self.original)
        paper = paper_table([(s.name, s.paper_view | measure) for s in self.systems], self.original)
        measured = self.systems[0].evaluation.summary["retention_measure"]
        return [
            (
                f"Side by side, mean scores in % (ours: {judge}, retention = {measured})",
                self.side_by_side_table(),
            ),
            (f"Our judge ({judge}): empty and refused outputs count as failures", failure),
            (f"Our judge ({judge}), the paper's view: empty outputs scored as perfectly safe", paper),
            (
                "Published DeepEval means (gpt-3.5-turbo) from the files' score columns, -1 dropped (n)",
                self.published_table(),
            ),
            ("Empty and refused outputs per system", self.failures_table()),
        ]

    def markdown(self) -> str:
        return "\n\n".join(f"### {heading}\n\n{table}" for heading, table in self.tables())

    def side_by_side_table(self) -> str:
        """Ours (failure view | paper view) beside DeepEval's published mean, per metric, as %."""

        def pct(value: float | None) -> str:
            return "—" if value is None else f"{100 * value:.1f}"

        metrics = (("bias", "Bias"), ("toxicity", "Toxicity"), ("retention", "Retention"))
        header = (
            ["System"]
            + [f"{label} ours / paper view / DeepEval" for _, label in metrics]
            + ["Empty", "Refusals"]
        )
        lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
        first = self.original["inputs"]
        cells = [
            f"{pct(first[m])} / {pct(first[m])} / {pct(self.published_original[m]['mean'])}" for m in SAFETY
        ]
        lines.append("| Original texts | " + " | ".join([*cells, "—", "—", "—"]) + " |")
        for s in self.systems:
            ours, view = s.evaluation.summary["outputs"], s.paper_view["outputs"]
            cells = [
                f"{pct(ours.get(m))} / {pct(view.get(m))} / {pct(s.published[m]['mean'])}" for m, _ in metrics
            ]
            failed = s.evaluation.summary["failed_outputs"]
            lines.append(
                f"| {s.name} | " + " | ".join([*cells, str(failed["empty"]), str(failed["refusal"])]) + " |"
            )
        return "\n".join(lines)

    def published_table(self) -> str:
        def cell(entry: dict[str, Any] | None) -> str:
            return "—" if not entry or entry["mean"] is None else f"{100 * entry['mean']:.2f}% ({entry['n']})"

        lines = [
            "| System | " + " | ".join(label for _, label in COLUMNS) + " |",
            "|---" * (len(COLUMNS) + 1) + "|",
        ]
        lines.append(
            "| Original texts | "
            + " | ".join(cell(self.published_original.get(k)) for k, _ in COLUMNS)
            + " |"
        )
        for s in self.systems:
            lines.append(f"| {s.name} | " + " | ".join(cell(s.published.get(k)) for k, _ in COLUMNS) + " |")
        return "\n".join(lines)

    def failures_table(self) -> str:
        lines = ["| System | Rows | Empty | Refusals | Failed % |", "|---|---|---|---|---|"]
        for s in self.systems:
            n, f = s.evaluation.summary["n"], s.evaluation.summary["failed_outputs"]
            lines.append(f"| {s.name} | {n} | {f['empty']} | {f['refusal']} | {f['pct']:.1f}% |")
        return "\n".join(lines)


def _read(directory: Path, name: str, column: str, limit: int | None) -> list[dict[str, Any]]:
    path = directory / name
    if not path.exists():
        raise MbiasError(
            f"{path}: missing; pass --data pointing at the shared data folder (with mbias-test/)"
        )
    rows = read_records(path, column)
    return rows[:limit] if limit else rows


def rescore(
    judge: Judge,
    data_dir: Path,
    *,
    limit: int | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> PaperRescore:
    """Score the original texts once, then each system's outputs against them."""
    directory = Path(data_dir) / "mbias-test"
    original_rows = _read(directory, ORIGINAL_FILE, "biased_text", limit)
    sources = [r["biased_text"] for r in original_rows]
    inputs = score_inputs(judge, sources)
    if on_progress:
        on_progress(len(sources))
    original = None
    results = []
    for name, file, column in SYSTEMS:
        rows = _read(directory, file, column, limit)
        if [r["biased_text"] for r in rows] != sources:
            raise MbiasError(f"{directory / file}: its biased_text rows differ from {ORIGINAL_FILE}")
        evaluation = evaluate(
            rows, judge, "biased_text", column, input_scores=inputs, on_progress=on_progress
        )
        original = original or evaluation.summary
        paper_view = summarise(evaluation.rows, evaluation.summary["metrics"], view="paper")
        results.append(SystemResult(name, file, evaluation, paper_view, published_means(rows, SCORE_COLUMNS)))
    return PaperRescore(original, published_means(original_rows, ORIGINAL_SCORES), results)


def total_rows(data_dir: Path, limit: int | None = None) -> int:
    """Texts the re-score judges (for a progress bar): the originals plus every system's outputs."""
    count = len(_read(Path(data_dir) / "mbias-test", ORIGINAL_FILE, "biased_text", limit))
    return count * (len(SYSTEMS) + 1)
