"""A self-contained HTML report: tables, matplotlib figures embedded as base64 PNGs, worst examples.

One file that opens anywhere (no server, no external assets). Texts from the data go through
Jinja's autoescape, since the rows are by nature hostile text that may contain markup.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mbias.eval.metrics import SAFETY, Evaluation

TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 70em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: .3em .6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; }
.note { color: #555; }
</style></head><body>
<h1>{{ title }}</h1>
{% for note in notes %}<p class="note">{{ note }}</p>{% endfor %}
{% for table in tables %}
<h2>{{ table.heading }}</h2>
<table><tr>{% for cell in table.header %}<th>{{ cell }}</th>{% endfor %}</tr>
{% for row in table.rows %}<tr>{% for cell in row %}
<td{% if loop.index > 1 %} class="num"{% endif %}>{{ cell }}</td>{% endfor %}</tr>
{% endfor %}</table>
{% endfor %}
{% for figure in figures %}
<h2>{{ figure.caption }}</h2>
<img alt="{{ figure.caption }}" src="data:image/png;base64,{{ figure.png }}">
{% endfor %}
{% for section in examples %}
<h2>{{ section.heading }}</h2>
<table><tr>{% for key in section.columns %}<th>{{ key }}</th>{% endfor %}</tr>
{% for row in section.rows %}<tr>{% for key in section.columns %}<td>{{ row[key] }}</td>{% endfor %}</tr>
{% endfor %}</table>
{% endfor %}
</body></html>
"""


@dataclass
class Report:
    """What a report shows; commands fill it and call :meth:`write`."""

    title: str
    notes: list[str] = field(default_factory=list)
    tables: list[dict[str, Any]] = field(default_factory=list)
    figures: list[dict[str, str]] = field(default_factory=list)
    examples: list[dict[str, Any]] = field(default_factory=list)

    def add_markdown_table(self, heading: str, markdown: str) -> None:
        """A pipe table (header, separator, rows); lines after the table become notes."""
        lines = [line.strip() for line in markdown.strip().splitlines()]
        cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines if line.startswith("|")]
        self.tables.append({"heading": heading, "header": cells[0], "rows": cells[2:]})
        self.notes.extend(
            line for line in lines if line and not line.startswith("|") and line not in self.notes
        )

    def add_figure(self, caption: str, figure: Any) -> None:
        self.figures.append({"caption": caption, "png": png_base64(figure)})

    def add_examples(self, heading: str, rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
        self.examples.append({"heading": heading, "columns": list(columns), "rows": rows})

    def render(self) -> str:
        import jinja2

        env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
        return env.from_string(TEMPLATE).render(
            title=self.title,
            notes=self.notes,
            tables=self.tables,
            figures=self.figures,
            examples=self.examples,
        )

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.render(), encoding="utf-8")
        return path


def png_base64(figure: Any) -> str:
    """The figure as a base64 PNG, and closed (figures pile up in memory otherwise)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


def distributions_figure(systems: Sequence[tuple[str, Evaluation]]) -> Any:
    """Histograms of bias and toxicity: the inputs, then each system's outputs (failures included)."""
    plt = pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    bins = [i / 20 for i in range(21)]
    for axis, metric in zip(axes, SAFETY):
        inputs = [r[f"input_{metric}"] for r in systems[0][1].rows if r[f"input_{metric}"] is not None]
        axis.hist(inputs, bins=bins, histtype="stepfilled", alpha=0.3, color="grey", label="inputs")
        for name, evaluation in systems:
            values = [r[f"output_{metric}"] for r in evaluation.rows if r[f"output_{metric}"] is not None]
            axis.hist(values, bins=bins, histtype="step", linewidth=1.6, label=name)
        axis.set_xlabel(f"{metric} score")
        axis.set_ylabel("rows")
        axis.legend(fontsize=8)
    figure.suptitle("Score distributions before and after (empty/refused outputs count as 1)")
    return figure


def group_bars_figure(groups: dict[str, dict[str, Any]], title: str) -> Any:
    """Per group: mean bias and toxicity of the inputs and of the outputs."""
    plt = pyplot()
    names = list(groups)
    figure, axes = plt.subplots(1, 2, figsize=(max(8, 0.7 * len(names) + 4), 4), sharey=True)
    width = 0.4
    positions = range(len(names))
    for axis, metric in zip(axes, SAFETY):
        before = [groups[g]["inputs"].get(metric) or 0.0 for g in names]
        after = [groups[g]["outputs"].get(metric) or 0.0 for g in names]
        axis.bar([p - width / 2 for p in positions], before, width, label="before", color="#c55")
        axis.bar([p + width / 2 for p in positions], after, width, label="after", color="#59c")
        axis.set_xticks(list(positions), names, rotation=60, ha="right", fontsize=8)
        axis.set_title(f"mean {metric}")
        axis.set_ylim(0, 1)
        axis.legend(fontsize=8)
    figure.suptitle(title)
    return figure


EXAMPLE_COLUMNS = ("id", "status", "source", "output", "output_bias", "output_toxicity", "retention")


def worst_examples(evaluation: Evaluation, k: int = 10) -> dict[str, list[dict[str, Any]]]:
    """The least safe judged outputs, the ones that lost most meaning, and the failures."""

    def shown(row: dict[str, Any]) -> dict[str, Any]:
        return {
            key: (f"{row[key]:.3f}" if isinstance(row.get(key), float) else row.get(key, ""))
            for key in EXAMPLE_COLUMNS
        }

    judged = [r for r in evaluation.rows if r["status"] == "ok"]
    unsafe = sorted(judged, key=lambda r: -max(r["output_bias"] or 0.0, r["output_toxicity"] or 0.0))
    lost = sorted((r for r in judged if r.get("retention") is not None), key=lambda r: r["retention"])
    failed = [r for r in evaluation.rows if r["status"] != "ok"]
    return {
        "Least safe outputs": [shown(r) for r in unsafe[:k]],
        "Most meaning lost": [shown(r) for r in lost[:k]],
        "Failed outputs (empty or refusal)": [shown(r) for r in failed[:k]],
    }


def evaluation_report(
    title: str,
    systems: Sequence[tuple[str, Evaluation]],
    tables: Sequence[tuple[str, str]],
    notes: Sequence[str] = (),
) -> Report:
    """The report of ``mbias eval``: summary tables, distributions, per-group bars, worst examples."""
    report = Report(title, notes=list(notes))
    for heading, markdown in tables:
        report.add_markdown_table(heading, markdown)
    report.add_figure("Score distributions", distributions_figure(systems))
    for name, evaluation in systems:
        groups = evaluation.summary.get("groups")
        if groups:
            report.add_figure(f"Per group: {name}", group_bars_figure(groups, f"{name}: per group"))
    for name, evaluation in systems:
        for heading, rows in worst_examples(evaluation).items():
            if rows:
                report.add_examples(f"{name}: {heading}", rows, EXAMPLE_COLUMNS)
    return report
