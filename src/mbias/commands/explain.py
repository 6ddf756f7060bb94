"""`mbias debias --explain`: the answer with its changed sentences highlighted, and a table of why.

The highlights come from the record's ``spans`` (their ``output_start`` / ``output_end`` offsets
into the rewrite), so what is shown is exactly what the Python API and the JSON output return.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from mbias.records import Record

STYLES = {"rewritten": "bold black on green", "flagged": "bold black on yellow"}
out = Console(soft_wrap=True)


def _scores(scores: dict[str, float] | None) -> str:
    return " ".join(f"{k[:3]} {v:.2f}" for k, v in (scores or {}).items()) or "-"


def explain_record(record: Record, console: Console = out) -> None:
    """Print one record: its rewrite with spans highlighted, then one table row per span."""
    spans = record.get("spans") or []
    shown = Text(record["rewrite"])
    for span in spans:
        shown.stylize(STYLES.get(span["action"], "bold"), span["output_start"], span["output_end"])
    # Texts are data, never rich markup: "[/bold]" in an answer would stop the job, "[b]" vanish.
    title = Text.assemble((str(record.get("id", "")), "bold"), f": {record['action']}")
    if record.get("reason"):
        title.append(f" ({record['reason']})")
    console.rule(title)
    console.print(shown)
    if not spans:
        console.print("[dim]no sentence changed or flagged[/]")
        return
    table = Table(show_lines=True, expand=True)
    for column in ("#", "category", "action", "original", "rewrite", "before", "after"):
        table.add_column(column, overflow="fold" if column in ("original", "rewrite") else "ellipsis")
    for number, span in enumerate(spans, 1):
        action = span["action"] + (f"\n{span['reason']}" if span.get("reason") else "")
        action += "\nby the escalation engine" if span.get("escalated") else ""
        table.add_row(
            str(number),
            Text(span.get("category") or "-"),
            Text(action),
            Text(span["original"]),
            Text(span["rewrite"]),
            _scores(span.get("before")),
            _scores(span.get("after")) + (f"\nsim {span['similarity']:.2f}" if "similarity" in span else ""),
        )
    console.print(table)
