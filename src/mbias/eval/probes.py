"""The demographic probe: does the rewriter treat every target group alike?

A seeded sample of hateful and neutral ToxiGen seed statements per group, restricted to held-out
texts (:func:`mbias.splits.is_heldout`) so no statement the judges or adapters trained on is
probed. Every statement is rewritten (screening off). Per group: toxicity and bias before and
after on the hateful ones, and over-intervention on the neutral ones (share changed, similarity
lost); then the spread across groups, since a fair rewriter helps every group about equally.
"""

from __future__ import annotations

import random
import re
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mbias.engines import Engine
from mbias.errors import MbiasError
from mbias.eval.metrics import Evaluation, evaluate
from mbias.intervene import Debiaser, DebiasSettings
from mbias.judges import Judge
from mbias.records import read_records
from mbias.splits import is_heldout, normalise

STATEMENTS = Path("toxigen-prompts") / "toxigen_statements.csv"
LABELS = ("hate", "neutral")
# the per-group figures whose spread across groups is reported
SPREAD_KEYS = (
    "toxicity_after",
    "bias_after",
    "toxicity_reduction_pct",
    "bias_reduction_pct",
    "neutral_changed_pct",
    "neutral_similarity_lost",
)


def words(text: str) -> list[str]:
    """The words of a text, so added punctuation or case does not count as an intervention."""
    return re.findall(r"\w+", normalise(text))


def sample_statements(path: Path, per_group: int, seed: int) -> list[dict[str, Any]]:
    """Up to ``per_group`` held-out statements per (group, label), drawn with a seeded RNG."""
    if not path.exists():
        raise MbiasError(f"{path}: missing; pass --data pointing at the shared data folder")
    pools: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for index, row in enumerate(read_records(path, "text")):
        if row.get("label") in LABELS and is_heldout(row["text"]):
            pools.setdefault((row["target_group"], row["label"]), []).append(
                {
                    "id": f"{row['target_group']}:{index}",
                    "text": row["text"],
                    "group": row["target_group"],
                    "label": row["label"],
                }
            )
    rng = random.Random(seed)
    chosen = []
    for key in sorted(pools):
        pool = pools[key]
        chosen.extend(rng.sample(pool, min(per_group, len(pool))))
    return chosen


ROW_FIELDS = ("id", "group", "label", "text", "rewrite", "action", "reason")


@dataclass
class ProbeResult:
    rows: list[dict[str, Any]]  # one per statement: text, rewrite, action, group, label
    hate: Evaluation | None
    neutral: Evaluation | None
    groups: dict[str, dict[str, Any]]
    overall: dict[str, Any]  # the same figures over all groups together
    spread: dict[str, dict[str, Any]]
    settings: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "overall": self.overall,
            "groups": self.groups,
            "spread": self.spread,
        }

    def markdown(self) -> str:
        def cell(value: Any, percent: bool = False) -> str:
            if value is None:
                return "—"
            return (
                f"{value:.1f}%" if percent else (f"{value:.3f}" if isinstance(value, float) else str(value))
            )

        header = (
            "Group",
            "n hate",
            "Toxicity before",
            "Toxicity after",
            "Toxicity reduction",
            "Bias before",
            "Bias after",
            "Bias reduction",
            "n neutral",
            "Neutral changed",
            "Similarity lost",
        )
        keys = (
            ("n_hate", False),
            ("toxicity_before", False),
            ("toxicity_after", False),
            ("toxicity_reduction_pct", True),
            ("bias_before", False),
            ("bias_after", False),
            ("bias_reduction_pct", True),
            ("n_neutral", False),
            ("neutral_changed_pct", True),
            ("neutral_similarity_lost", False),
        )
        lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
        for group, values in [*self.groups.items(), ("**all groups**", self.overall)]:
            lines.append(f"| {group} | " + " | ".join(cell(values.get(k), pct) for k, pct in keys) + " |")
        for stat in ("max_minus_min", "std"):
            cells = [cell(self.spread[k][stat], pct) if k in self.spread else "" for k, pct in keys]
            lines.append(f"| **spread: {stat.replace('_', ' ')}** | " + " | ".join(cells) + " |")
        return "\n".join(lines)


def figures(hate_block: dict[str, Any] | None, neutral_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One line of the table: safety before/after on hateful statements, intervention on neutral ones."""
    values: dict[str, Any] = {"n_hate": 0, "n_neutral": len(neutral_rows)}
    if hate_block:
        values["n_hate"] = hate_block["n"]
        for metric in ("toxicity", "bias"):
            values[f"{metric}_before"] = hate_block["inputs"][metric]
            values[f"{metric}_after"] = hate_block["outputs"][metric]
            values[f"{metric}_reduction_pct"] = hate_block["reduction_pct"][metric]
        values["failed_outputs"] = hate_block["failed_outputs"]["total"]
    if neutral_rows:
        changed = [words(r["source"]) != words(r["output"]) for r in neutral_rows]
        values["neutral_changed_pct"] = 100.0 * sum(changed) / len(neutral_rows)
        kept = [r["retention"] for r in neutral_rows if r["retention"] is not None]
        values["neutral_similarity_lost"] = 1.0 - sum(kept) / len(kept) if kept else None
    return values


def spread(groups: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per figure: max - min and population std across the groups that have it, and which groups."""
    result = {}
    for key in SPREAD_KEYS:
        present = {g: v[key] for g, v in groups.items() if v.get(key) is not None}
        if not present:
            continue
        values = list(present.values())
        result[key] = {
            "max_minus_min": max(values) - min(values),
            "std": statistics.pstdev(values),
            "max_group": max(present, key=present.get),  # type: ignore[arg-type]
            "min_group": min(present, key=present.get),  # type: ignore[arg-type]
            "groups": len(values),
        }
    return result


def run_probe(
    engine: str | Engine,
    judge: Judge,
    data_dir: Path,
    *,
    per_group: int = 10,
    seed: int = 0,
    batch_size: int = 8,
    max_new_tokens: int = 96,
    retries: int = DebiasSettings.retries,
    escalate: str | None = None,
    on_progress: Callable[[int], None] | None = None,
    done: list[dict[str, Any]] | None = None,
    on_rows: Callable[[list[dict[str, Any]]], None] | None = None,
) -> ProbeResult:
    """Sample, rewrite every statement, judge before and after, and compare the groups.

    ``done``: rows an interrupted run wrote, whose statements are not rewritten again; ``on_rows``
    gets each finished batch's rows, so a caller can write them as they come."""
    statements = sample_statements(Path(data_dir) / STATEMENTS, per_group, seed)
    if not statements:
        raise MbiasError("no held-out statements to probe")
    settings = DebiasSettings(
        batch_size=batch_size, max_new_tokens=max_new_tokens, screen=False, retries=retries, escalate=escalate
    )
    debiaser = Debiaser(engine, judge=judge, settings=settings)
    finished = {str(r["id"]): r for r in done or []}
    for batch in debiaser.stream([s for s in statements if s["id"] not in finished]):
        rows = [{k: r.get(k) for k in ROW_FIELDS} for r in batch]
        finished.update((r["id"], r) for r in rows)
        if on_rows:
            on_rows(rows)
        if on_progress:
            on_progress(len(batch))
    rows = [finished[s["id"]] for s in statements]
    parts = {}
    for label in LABELS:
        mine = [r for r in rows if r["label"] == label]
        parts[label] = evaluate(mine, judge, "text", "rewrite", "group") if mine else None
    hate, neutral = parts["hate"], parts["neutral"]
    neutral_rows = neutral.rows if neutral else []
    groups = {
        group: figures(
            hate.summary["groups"].get(group) if hate else None,
            [r for r in neutral_rows if r["group"] == group],
        )
        for group in sorted({r["group"] for r in rows})
    }
    overall = figures(hate.summary if hate else None, neutral_rows)
    info = {
        "engine": debiaser.engine.name,
        "judge": getattr(judge, "name", type(judge).__name__),
        "per_group": per_group,
        "seed": seed,
        "statements": len(rows),
    }
    return ProbeResult(rows, hate, neutral, groups, overall, spread(groups), info)


def probe_figure(result: ProbeResult) -> Any:
    """Per group: toxicity and bias of hateful statements before/after, and neutral statements changed."""
    from mbias.eval.report import pyplot

    plt = pyplot()
    names = list(result.groups)
    figure, axes = plt.subplots(1, 3, figsize=(max(12, 0.9 * len(names) + 6), 4.2))
    width = 0.4
    positions = list(range(len(names)))
    for axis, metric in zip(axes[:2], ("toxicity", "bias")):
        before = [result.groups[g].get(f"{metric}_before") or 0.0 for g in names]
        after = [result.groups[g].get(f"{metric}_after") or 0.0 for g in names]
        axis.bar([p - width / 2 for p in positions], before, width, label="before", color="#c55")
        axis.bar([p + width / 2 for p in positions], after, width, label="after", color="#59c")
        axis.set_title(f"hateful statements: mean {metric}")
        axis.set_ylim(0, 1)
        axis.legend(fontsize=8)
    changed = [result.groups[g].get("neutral_changed_pct") or 0.0 for g in names]
    axes[2].bar(positions, changed, color="#999")
    axes[2].set_title("neutral statements changed (%)")
    axes[2].set_ylim(0, 100)
    for axis in axes:
        axis.set_xticks(positions, names, rotation=60, ha="right", fontsize=8)
    figure.suptitle(f"Demographic probe: {result.settings['engine']}", y=1.03)
    return figure
