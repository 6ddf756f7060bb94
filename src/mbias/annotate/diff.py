"""Word-level diff of a rewrite against its source, so a reviewer sees at a glance what changed."""

from __future__ import annotations

import difflib
import re

_TOKEN = re.compile(r"\s+|\w+(?:['\u2019]\w+)*|[^\w\s]")


def word_diff(source: str, rewrite: str) -> list[tuple[str, str]]:
    """Segments ``(kind, text)`` with kind ``same``, ``del`` (only in the source) or ``ins`` (only in
    the rewrite); joining the ``same`` and ``ins`` texts gives the rewrite back. Plain strings:
    the template escapes them, so no markup is ever built from user text here."""
    old, new = _TOKEN.findall(source), _TOKEN.findall(rewrite)
    matcher = difflib.SequenceMatcher(lambda token: token.isspace(), old, new, autojunk=False)
    segments: list[tuple[str, str]] = []
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            segments.append(("same", "".join(new[j1:j2])))
            continue
        if op in ("delete", "replace"):
            segments.append(("del", "".join(old[i1:i2])))
        if op in ("insert", "replace"):
            segments.append(("ins", "".join(new[j1:j2])))
    return segments
