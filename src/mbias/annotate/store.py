"""The annotation database: items to review, their candidates and scores, reviews, an audit log.

SQLite in WAL mode so the review app's readers never block its writers; foreign keys on; every
write in one explicit transaction, committed before the call returns, so a crash never loses a
stored item or a saved review. Reviews are rows of their own (one per item and reviewer): a second
reviewer adds a row instead of overwriting the first, which is what makes agreement measurable.
Concurrent decisions on one item are serialised by optimistic concurrency: the item's ``version``
is checked in the ``UPDATE``; a stale version raises :class:`Conflict` instead of losing an update.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mbias.errors import MbiasError

SCHEMA_VERSION = "1"
STATUSES = ("pending", "accepted", "edited", "rejected")
DECISIONS = ("accepted", "edited", "rejected")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY,
    text TEXT NOT NULL,
    text_key TEXT NOT NULL UNIQUE,
    source_file TEXT,
    source_id TEXT,
    group_name TEXT,
    dimension TEXT,
    meta TEXT NOT NULL DEFAULT '{}',
    origin TEXT NOT NULL,
    engine_action TEXT,
    engine_reason TEXT,
    status TEXT NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'accepted', 'edited', 'rejected')),
    version INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS candidates (
    id INTEGER PRIMARY KEY,
    item_id INTEGER NOT NULL REFERENCES items(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    text TEXT NOT NULL,
    origin TEXT NOT NULL,
    chosen INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    UNIQUE (item_id, position)
);
CREATE TABLE IF NOT EXISTS scores (
    id INTEGER PRIMARY KEY,
    item_id INTEGER NOT NULL REFERENCES items(id) ON DELETE CASCADE,
    candidate_id INTEGER REFERENCES candidates(id) ON DELETE CASCADE,
    judge TEXT NOT NULL,
    metric TEXT NOT NULL,
    value REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS reviews (
    id INTEGER PRIMARY KEY,
    item_id INTEGER NOT NULL REFERENCES items(id) ON DELETE CASCADE,
    reviewer TEXT NOT NULL,
    decision TEXT NOT NULL CHECK (decision IN ('accepted', 'edited', 'rejected')),
    candidate_id INTEGER REFERENCES candidates(id),
    final_text TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    UNIQUE (item_id, reviewer),
    CHECK (decision = 'rejected' OR final_text IS NOT NULL)
);
CREATE TABLE IF NOT EXISTS audit_log (
    id INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    entity TEXT NOT NULL,
    entity_id INTEGER NOT NULL,
    field TEXT NOT NULL,
    old TEXT,
    new TEXT
);
CREATE INDEX IF NOT EXISTS candidates_item ON candidates(item_id);
CREATE INDEX IF NOT EXISTS scores_item ON scores(item_id);
CREATE INDEX IF NOT EXISTS reviews_item ON reviews(item_id);
CREATE INDEX IF NOT EXISTS audit_entity ON audit_log(entity, entity_id);
"""


class Conflict(MbiasError):
    """Someone changed the item after this reviewer loaded it; nothing was saved."""


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _printable(text: str) -> str:
    """An edit without control characters (a NUL pasted in would reach the training data)."""
    return _CONTROL.sub("", text)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def text_key(text: str) -> str:
    """Identity of a text for de-duplication: the same words with other spacing are the same text."""
    return hashlib.sha256(" ".join(text.split()).encode("utf-8")).hexdigest()


@dataclass
class NewCandidate:
    text: str
    origin: str
    chosen: bool = False
    scores: dict[str, float] = field(default_factory=dict)


@dataclass
class NewItem:
    """One text to review, as the annotator or a pairs import hands it to the store."""

    text: str
    origin: str
    source_file: str | None = None
    source_id: str | None = None
    group: str | None = None
    dimension: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    engine_action: str | None = None
    engine_reason: str | None = None
    scores: dict[str, float] = field(default_factory=dict)
    candidates: list[NewCandidate] = field(default_factory=list)


class Store:
    """All reads and writes of one annotation database; one short-lived connection per call, so
    the object can be shared by the web app's worker threads."""

    def __init__(self, path: str | Path, create: bool = True):
        self.path = Path(path)
        if not self.path.exists():
            if not create:
                raise MbiasError(f"{self.path}: no such annotation database; create it with `mbias annotate`")
            self.path.parent.mkdir(parents=True, exist_ok=True)
        elif self.path.is_dir():
            raise MbiasError(f"{self.path}: is a directory, expected an SQLite file")
        self._init_schema()

    # -- plumbing -------------------------------------------------------------------------------
    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise MbiasError(f"{self.path}: cannot open ({exc})") from None
        db.row_factory = sqlite3.Row
        try:
            db.execute("PRAGMA foreign_keys = ON")
            db.execute("PRAGMA busy_timeout = 30000")
            yield db
        except sqlite3.DatabaseError as exc:
            if "file is not a database" in str(exc):
                raise MbiasError(f"{self.path}: not an SQLite database") from None
            if isinstance(exc, sqlite3.OperationalError):  # read-only, locked, gone: the setting's fault
                raise MbiasError(f"{self.path}: {exc}") from None
            raise
        finally:
            db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE takes the write lock up front, so two writers queue instead of failing
        half-way; the block commits as a whole or not at all."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _init_schema(self) -> None:
        with self._connect() as db:
            db.execute("PRAGMA journal_mode = WAL")  # persistent; cannot run inside a transaction
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if tables and "meta" not in tables:
            raise MbiasError(f"{self.path}: an SQLite file, but not an mbias annotation database")
        with self._transaction() as db:
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            found = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if found is None:
                db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
                db.execute("INSERT INTO meta VALUES ('secret', ?)", (secrets.token_urlsafe(32),))
        if found is not None and found[0] != SCHEMA_VERSION:
            raise MbiasError(f"{self.path}: schema version {found[0]}, this mbias reads {SCHEMA_VERSION}")

    def require_writable(self) -> None:
        """Refuse a database this process cannot write (a read-only file, folder or mount) before
        anyone reviews, instead of on their first decision."""
        with self._transaction() as db:
            db.execute("UPDATE meta SET value = value WHERE key = 'schema_version'")

    @staticmethod
    def _audit(
        db: sqlite3.Connection, actor: str, entity: str, entity_id: int, name: str, old: Any, new: Any
    ) -> None:
        db.execute(
            "INSERT INTO audit_log (at, actor, entity, entity_id, field, old, new)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                now(),
                actor,
                entity,
                entity_id,
                name,
                None if old is None else str(old),
                None if new is None else str(new),
            ),
        )

    def secret(self) -> str:
        """Per-database key that signs review-app sessions, so a server restart keeps reviewers signed in."""
        with self._connect() as db:
            return db.execute("SELECT value FROM meta WHERE key = 'secret'").fetchone()[0]

    # -- adding items ---------------------------------------------------------------------------
    def known_keys(self, keys: Iterable[str]) -> set[str]:
        keys = list(keys)
        found: set[str] = set()
        with self._connect() as db:
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                marks = ",".join("?" * len(chunk))
                found.update(
                    r[0] for r in db.execute(f"SELECT text_key FROM items WHERE text_key IN ({marks})", chunk)
                )
        return found

    def add_items(self, items: list[NewItem], actor: str, judge: str | None = None) -> list[int]:
        """Store items with their candidates and scores in one transaction; a text already in the
        database is skipped (its id is not returned)."""
        added = []
        with self._transaction() as db:
            for item in items:
                stamp = now()
                cursor = db.execute(
                    "INSERT OR IGNORE INTO items (text, text_key, source_file, source_id, group_name,"
                    " dimension, meta, origin, engine_action, engine_reason, created_at, updated_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        item.text,
                        text_key(item.text),
                        item.source_file,
                        item.source_id,
                        item.group,
                        item.dimension,
                        json.dumps(item.meta, ensure_ascii=False, default=str),
                        item.origin,
                        item.engine_action,
                        item.engine_reason,
                        stamp,
                        stamp,
                    ),
                )
                if not cursor.rowcount:
                    continue
                item_id = cursor.lastrowid
                added.append(item_id)
                self._audit(db, actor, "item", item_id, "status", None, "pending")
                self._add_scores(db, item_id, None, judge, item.scores)
                for position, candidate in enumerate(item.candidates):
                    row = db.execute(
                        "INSERT INTO candidates (item_id, position, text, origin, chosen, created_at)"
                        " VALUES (?, ?, ?, ?, ?, ?)",
                        (item_id, position, candidate.text, candidate.origin, int(candidate.chosen), stamp),
                    )
                    self._add_scores(db, item_id, row.lastrowid, judge, candidate.scores)
        return added

    @staticmethod
    def _add_scores(
        db: sqlite3.Connection,
        item_id: int,
        candidate_id: int | None,
        judge: str | None,
        scores: dict[str, float],
    ) -> None:
        db.executemany(
            "INSERT INTO scores (item_id, candidate_id, judge, metric, value) VALUES (?, ?, ?, ?, ?)",
            [
                (item_id, candidate_id, judge or "unknown", metric, float(value))
                for metric, value in scores.items()
            ],
        )

    # -- reading --------------------------------------------------------------------------------
    def item(self, item_id: int) -> dict[str, Any] | None:
        """An item with its candidates, scores and reviews, as the review page shows it."""
        with self._connect() as db:
            row = db.execute("SELECT * FROM items WHERE id = ?", (item_id,)).fetchone()
            if row is None:
                return None
            item = dict(row)
            item["meta"] = json.loads(item["meta"])
            scores: dict[int | None, dict[str, float]] = {}
            for s in db.execute(
                "SELECT candidate_id, metric, value FROM scores WHERE item_id = ?", (item_id,)
            ):
                scores.setdefault(s["candidate_id"], {})[s["metric"]] = s["value"]
            item["scores"] = scores.get(None, {})
            item["candidates"] = [
                {**dict(c), "scores": scores.get(c["id"], {})}
                for c in db.execute(
                    "SELECT * FROM candidates WHERE item_id = ? ORDER BY position", (item_id,)
                )
            ]
            item["reviews"] = [
                dict(r) for r in db.execute("SELECT * FROM reviews WHERE item_id = ? ORDER BY id", (item_id,))
            ]
        return item

    def next_item(self, reviewer: str, reviews_needed: int = 1, after: int = 0) -> int | None:
        """The next item this reviewer should see: fewer than ``reviews_needed`` reviews and none
        by them; after ``after`` in id order, wrapping round (skipping moves forward)."""
        query = (
            "SELECT i.id FROM items i WHERE i.id > ?"
            " AND (SELECT COUNT(*) FROM reviews r WHERE r.item_id = i.id) < ?"
            " AND NOT EXISTS (SELECT 1 FROM reviews r WHERE r.item_id = i.id AND r.reviewer = ?)"
            " ORDER BY i.id LIMIT 1"
        )
        with self._connect() as db:
            row = db.execute(query, (after, reviews_needed, reviewer)).fetchone()
            if row is None and after:
                row = db.execute(query, (0, reviews_needed, reviewer)).fetchone()
        return None if row is None else row[0]

    def progress(self, reviewer: str, reviews_needed: int = 1) -> dict[str, int]:
        with self._connect() as db:
            total = db.execute("SELECT COUNT(*) FROM items").fetchone()[0]
            done = db.execute(
                "SELECT COUNT(*) FROM items i"
                " WHERE (SELECT COUNT(*) FROM reviews r WHERE r.item_id = i.id) >= ?",
                (reviews_needed,),
            ).fetchone()[0]
            mine = db.execute("SELECT COUNT(*) FROM reviews WHERE reviewer = ?", (reviewer,)).fetchone()[0]
        return {"total": total, "reviewed": done, "mine": mine}

    def audit(self, entity: str | None = None, entity_id: int | None = None) -> list[dict[str, Any]]:
        query, args = "SELECT * FROM audit_log", []
        if entity is not None:
            query += " WHERE entity = ? AND entity_id = ?"
            args = [entity, entity_id]
        with self._connect() as db:
            return [dict(r) for r in db.execute(query + " ORDER BY id", args)]

    def reviews(self) -> list[dict[str, Any]]:
        with self._connect() as db:
            return [dict(r) for r in db.execute("SELECT * FROM reviews ORDER BY item_id, id")]

    def status_counts(self) -> dict[str, int]:
        with self._connect() as db:
            found = dict(db.execute("SELECT status, COUNT(*) FROM items GROUP BY status").fetchall())
        return {status: found.get(status, 0) for status in STATUSES}

    def reviewed_items(self, min_reviews: int = 1) -> list[dict[str, Any]]:
        """Items whose current status is accepted or edited with at least ``min_reviews`` reviews,
        each with its reviews (oldest first) and the origin of the candidate reviewers started from."""
        with self._connect() as db:
            items = [
                dict(r)
                for r in db.execute(
                    "SELECT * FROM items i WHERE status IN ('accepted', 'edited')"
                    " AND (SELECT COUNT(*) FROM reviews r WHERE r.item_id = i.id) >= ? ORDER BY id",
                    (min_reviews,),
                )
            ]
            for item in items:
                item["meta"] = json.loads(item["meta"])
                item["reviews"] = [
                    dict(r)
                    for r in db.execute(
                        "SELECT r.*, c.origin AS candidate_origin FROM reviews r"
                        " LEFT JOIN candidates c ON c.id = r.candidate_id"
                        " WHERE r.item_id = ? ORDER BY r.updated_at, r.id",
                        (item["id"],),
                    )
                ]
        return items

    # -- deciding -------------------------------------------------------------------------------
    def decide(
        self,
        item_id: int,
        reviewer: str,
        decision: str,
        version: int,
        candidate_id: int | None = None,
        text: str | None = None,
        reviews_needed: int = 1,
    ) -> dict[str, Any]:
        """Record one reviewer's decision; returns the stored ``decision`` and the item's new ``version``.

        ``accepted`` takes a candidate as it is, ``edited`` takes ``text`` (optionally noting the
        candidate it started from; unchanged, it counts as accepting that candidate), ``rejected``
        takes nothing. ``version`` is the item version the
        reviewer saw; if the item changed since, :class:`Conflict` is raised and nothing is stored.
        With ``reviews_needed`` over 1 reviews are independent: a reviewer's first review of an item
        still short of reviews is kept whatever others decided meanwhile (their reviews are not
        edits it would overwrite). The same reviewer deciding again replaces their own review
        (the audit log keeps the old one).
        """
        if decision not in DECISIONS:
            raise MbiasError(f"unknown decision {decision!r}; use one of {', '.join(DECISIONS)}")
        final_text = None
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM items WHERE id = ?", (item_id,)).fetchone() is None:
                raise MbiasError(f"no item {item_id}")
            candidate = None
            if candidate_id is not None:
                candidate = db.execute(
                    "SELECT * FROM candidates WHERE id = ? AND item_id = ?", (candidate_id, item_id)
                ).fetchone()
                if candidate is None:
                    raise MbiasError(f"candidate {candidate_id} does not belong to item {item_id}")
            if decision == "accepted":
                if candidate is None:
                    raise MbiasError("accepting needs the candidate to accept")
                final_text = candidate["text"]
            elif decision == "edited":
                final_text = _printable((text or "").replace("\r\n", "\n")).strip()
                if not final_text:
                    raise MbiasError("an edited rewrite cannot be empty; reject the item instead")
                if candidate is not None and final_text == candidate["text"]:
                    decision = "accepted"  # an "edit" that changed nothing is an acceptance
            else:
                candidate_id = None
            stamp = now()
            old_status, current = db.execute(
                "SELECT status, version FROM items WHERE id = ?", (item_id,)
            ).fetchone()
            if self._independent(db, item_id, reviewer, reviews_needed):
                version = current
            updated = db.execute(
                "UPDATE items SET status = ?, version = version + 1, updated_at = ?"
                " WHERE id = ? AND version = ?",
                (decision, stamp, item_id, version),
            )
            if updated.rowcount != 1:
                raise Conflict(self._conflict_message(db, item_id))
            if old_status != decision:
                self._audit(db, reviewer, "item", item_id, "status", old_status, decision)
            self._save_review(db, item_id, reviewer, decision, candidate_id, final_text, stamp)
            return {"decision": decision, "version": version + 1}

    @staticmethod
    def _independent(db: sqlite3.Connection, item_id: int, reviewer: str, reviews_needed: int) -> bool:
        """Whether this decision is a new independent review: several are wanted, this reviewer
        has none of this item yet, and the item still lacks some."""
        if reviews_needed <= 1:
            return False
        rows = db.execute("SELECT reviewer FROM reviews WHERE item_id = ?", (item_id,)).fetchall()
        return reviewer not in {r[0] for r in rows} and len(rows) < reviews_needed

    def _save_review(
        self,
        db: sqlite3.Connection,
        item_id: int,
        reviewer: str,
        decision: str,
        candidate_id: int | None,
        final_text: str | None,
        stamp: str,
    ) -> None:
        new = {"decision": decision, "candidate_id": candidate_id, "final_text": final_text}
        old = db.execute(
            "SELECT * FROM reviews WHERE item_id = ? AND reviewer = ?", (item_id, reviewer)
        ).fetchone()
        if old is None:
            review_id = db.execute(
                "INSERT INTO reviews"
                " (item_id, reviewer, decision, candidate_id, final_text, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (item_id, reviewer, decision, candidate_id, final_text, stamp, stamp),
            ).lastrowid
            before: dict[str, Any] = dict.fromkeys(new)
        else:
            review_id = old["id"]
            before = {name: old[name] for name in new}
            db.execute(
                "UPDATE reviews SET decision = ?, candidate_id = ?, final_text = ?, updated_at = ?"
                " WHERE id = ?",
                (decision, candidate_id, final_text, stamp, review_id),
            )
        for name, value in new.items():
            if before[name] != value:
                self._audit(db, reviewer, "review", review_id, name, before[name], value)

    @staticmethod
    def _conflict_message(db: sqlite3.Connection, item_id: int) -> str:
        last = db.execute(
            "SELECT reviewer, decision, updated_at FROM reviews WHERE item_id = ?"
            " ORDER BY updated_at DESC LIMIT 1",
            (item_id,),
        ).fetchone()
        who = (
            f"{last['reviewer']} recorded '{last['decision']}' at {last['updated_at'][11:19]} UTC"
            if last
            else ""
        )
        return (
            f"item {item_id} changed while you were looking at it"
            + (f" ({who})" if who else "")
            + "; your decision was not saved. Here it is as it is now: decide again if you still disagree."
        )
