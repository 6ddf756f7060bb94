"""Reading and writing the one record shape every command passes along.

A record is a dict with at least ``id`` and ``text``; stages add fields (``rewrite``, ``action``,
scores). Output is written row by row as work completes, so an interrupted job loses nothing and
``resume`` skips exactly the ids already written.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from mbias.errors import MbiasError

csv.field_size_limit(2**31 - 1)  # a long answer is one cell: more than the module's 128 KiB default
FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}
TEXT_COLUMN_GUESSES = ("text", "biased_text", "toxic", "sentence", "comment")
Record = dict[str, Any]
# Where a file's own "text" column goes when another column is the one to read: a record's
# "text" is always the text mbias reads.
FILE_TEXT = "file_text"


class NoTextColumn(MbiasError):
    """No column was named and none has a familiar name; callers with a mapping can recover."""

    def __init__(self, message: str, columns: list[str]):
        super().__init__(message)
        self.columns = columns


def file_format(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise MbiasError(
            f"{path}: unsupported file type {suffix or '(none)'}; use .csv, .tsv, .jsonl or .parquet"
        )
    return FORMATS[suffix]


def _clean_value(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        return value.item()  # numpy scalars -> python, so json.dumps works
    return value


def _read_rows(path: Path, fmt: str) -> list[dict[str, Any]]:
    try:
        if fmt == "jsonl":
            rows = []
            # utf-8-sig: a byte-order mark (Windows editors write one) is not part of the first row
            with path.open(encoding="utf-8-sig") as handle:
                if path.suffix.lower() == ".json" and handle.read(4096).lstrip().startswith("["):
                    handle.seek(0)  # one JSON array of objects
                    return _json_array(path, handle.read())
                handle.seek(0)
                for number, line in enumerate(handle, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise MbiasError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
                    if not isinstance(row, dict):
                        raise MbiasError(f"{path}:{number}: each line must be a JSON object")
                    rows.append(repair_unicode(row))  # a "\ud800" escape is not text UTF-8 can hold
            return rows
        import pandas as pd

        if fmt == "parquet":
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(
                path, sep="\t" if fmt == "tsv" else ",", dtype=str, keep_default_na=False, encoding="utf-8"
            )
        return [{k: _clean_value(v) for k, v in row.items()} for row in frame.to_dict(orient="records")]
    except UnicodeDecodeError as exc:
        raise MbiasError(
            f"{path}: not UTF-8 text (bad byte at position {exc.start}); re-encode it as UTF-8"
        ) from None
    except MbiasError:
        raise
    except Exception as exc:  # pandas/pyarrow raise many types for a corrupt file
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MbiasError(f"{path}: cannot read as {fmt}: {first_line}") from None


def _json_array(path: Path, text: str) -> list[dict[str, Any]]:
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MbiasError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise MbiasError(f"{path}: a JSON array must hold objects, one per record")
    return repair_unicode(rows)


def _load_hf_dataset(ref: str) -> list[dict[str, Any]]:
    """``hf:<dataset id>[:<split>]`` (needs hub access)."""
    name, _, split = ref[3:].partition(":")
    try:
        import datasets

        data = datasets.load_dataset(name, split=split or "train")
    except Exception as exc:
        raise MbiasError(f"cannot load Hugging Face dataset {name!r}: {str(exc).splitlines()[0]}") from None
    return [dict(row) for row in data]


def pick_column(
    columns: Iterable[str],
    column: str | None,
    source: str,
    guesses: tuple[str, ...] = TEXT_COLUMN_GUESSES,
    option: str = "--column",
) -> str:
    """The column to read: the one asked for, else the first familiar name."""
    columns = list(dict.fromkeys(columns))
    if column:
        if column not in columns:
            raise MbiasError(f"{source}: no column {column!r} ({option}); columns are: {', '.join(columns)}")
        return column
    for guess in guesses:
        if guess in columns:
            return guess
    known, listed = ", ".join(guesses), ", ".join(columns)
    raise NoTextColumn(
        f"{source}: none of the columns {known}; pass {option} (columns are: {listed})", columns
    )


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a CSV/TSV/JSONL/Parquet file, or a one-line MbiasError saying what is wrong."""
    path = Path(path)
    if not path.exists():
        raise MbiasError(f"{path}: no such file")
    if path.is_dir():
        raise MbiasError(f"{path}: is a directory, expected a file")
    fmt = file_format(path)
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise MbiasError(f"{path}: cannot open ({exc.strerror})") from None
    return _read_rows(path, fmt)


def read_records(source: str | Path, column: str | None = None) -> list[Record]:
    """Records from a CSV/TSV/JSONL/Parquet file or ``hf:<dataset>``; ``text`` is the chosen column."""
    ref = str(source)
    rows = _load_hf_dataset(ref) if ref.startswith("hf:") else read_rows(ref)
    if not rows:
        raise MbiasError(f"{ref}: no rows")
    text_column = pick_column(rows[0].keys(), column, ref)
    records = []
    for index, row in enumerate(rows):
        value = row.get(text_column)
        record = dict(row)
        if text_column != "text" and "text" in record:  # the file's own "text" column is not lost
            record[FILE_TEXT] = record["text"]
        record["id"] = str(row["id"]) if row.get("id") not in (None, "") else str(index)
        record["text"] = "" if value is None else str(value)
        records.append(record)
    ids = [r["id"] for r in records]
    if len(set(ids)) != len(ids):
        raise MbiasError(f"{ref}: the id column has duplicate values; ids must be unique to resume safely")
    return records


# A surrogate code point left alone in a str: JSON's "\ud800" escape decodes to one, UTF-8 cannot
# encode it, and every tokenizer and writer downstream fails on it.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def lone_surrogate(text: str) -> int | None:
    """Where ``text`` holds a surrogate with no partner (not valid Unicode), or None."""
    found = _LONE_SURROGATE.search(text)
    return found.start() if found else None


def valid_unicode(text: str) -> str:
    """``text`` with each lone surrogate replaced by U+FFFD, as a UTF-8 decoder would have."""
    return _LONE_SURROGATE.sub("\ufffd", text)


def repair_unicode(value: Any) -> Any:
    """``value`` (parsed JSON) with every string through :func:`valid_unicode`: what an upstream
    sent can then be encoded, whichever field held the lone surrogate."""
    if isinstance(value, str):
        return valid_unicode(value)
    if isinstance(value, list):
        return [repair_unicode(v) for v in value]
    if isinstance(value, dict):
        return {repair_unicode(k): repair_unicode(v) for k, v in value.items()}
    return value


def as_records(items: Iterable[str | Record | None]) -> list[Record]:
    """What the rewrite path takes: texts (numbered from 0) or records holding a ``text``, every
    string valid Unicode (a lone surrogate becomes U+FFFD, as a UTF-8 decoder would make it). One
    string alone, which would be read character by character, or an item of another type is an
    error that names it."""
    if isinstance(items, (str, bytes)):
        raise MbiasError("give a list of texts, not one string: debias([text])")
    records: list[Record] = []
    for i, item in enumerate(items):
        if item is None or isinstance(item, str):
            records.append({"id": str(i), "text": repair_unicode(item)})
        elif isinstance(item, Mapping):
            if not isinstance(item.get("text"), (str, type(None))):
                raise MbiasError(f"item {i}: its text is {type(item['text']).__name__}, not a string")
            records.append(repair_unicode(dict(item)))
        else:
            raise MbiasError(
                f"item {i} is {type(item).__name__}: give texts (str) or records (dicts with a 'text')"
            )
    return records


def _flat(record: Record) -> dict[str, Any]:
    """CSV and Parquet cells hold scalars: nested values become JSON strings."""
    return {
        k: json.dumps(v, ensure_ascii=False) if isinstance(v, (list, dict)) else v for k, v in record.items()
    }


def write_parquet(path: str | Path, records: Iterable[Record]) -> None:
    """A whole Parquet file, cells as the other formats hold them: each record as it reads back
    from JSON, nested values (``spans``, ``candidates``) as JSON strings. ``RecordWriter`` and the
    Ray job's shards both write through here, so their files agree cell for cell."""
    import pandas as pd

    rows = [_flat(json.loads(json.dumps(r, ensure_ascii=False, default=str))) for r in records]
    pd.DataFrame(rows).to_parquet(path, index=False)


def refuse_overwriting_input(output: str | Path, inputs: Iterable[str | Path | None]) -> None:
    """A one-line error when ``output`` is one of the files the command reads."""
    target = Path(output).resolve()
    for given in inputs:
        if given is not None and not str(given).startswith("hf:") and Path(given).resolve() == target:
            raise MbiasError(f"{output}: is the input file; write the output somewhere else")


def check_writable(folder: Path) -> None:
    """Create ``folder`` and make sure a file can be written there, before any work is done."""
    import tempfile

    if folder.exists() and not folder.is_dir():
        raise MbiasError(f"{folder}: is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".mbias-write-check-"):
            pass
    except OSError as exc:
        raise MbiasError(f"{folder}: cannot write there ({exc.strerror or type(exc).__name__})") from None


def _drop_partial_line(path: Path) -> None:
    """Cut a last line that a killed job left half-written (no newline at its end): its record was
    never finished, and resuming writes it again. A JSON line that is whole only lacks its newline."""
    with path.open("rb+") as handle:
        size = handle.seek(0, 2)
        if not size:
            return
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return
        cut, end, step = 0, size, 1 << 16
        while end > 0 and not cut:  # the start of the last line: after the last newline
            start = max(0, end - step)
            handle.seek(start)
            newline = handle.read(end - start).rfind(b"\n")
            cut = start + newline + 1 if newline >= 0 else 0
            end = start
        handle.seek(cut)
        if _is_json_object(handle.read()):
            handle.write(b"\n")
        else:
            handle.truncate(cut)


def _drop_unfinished_row(path: Path, delimiter: str) -> None:
    """Cut a CSV's last row when a killed job left it unfinished. A row is finished once its
    line break is written outside quotes: a cut inside a quoted cell that spans lines leaves the
    quote open, and rows appended after it would be read as part of that cell. Bad CSV before
    the end is not ours to cut: resuming is refused instead."""
    size, consumed, end, line_ended = path.stat().st_size, 0, 0, False
    with path.open("rb") as handle:

        def lines() -> Iterator[str]:
            nonlocal consumed, line_ended
            for raw in handle:
                consumed += len(raw)
                line_ended = raw.endswith(b"\n")
                yield raw.decode("utf-8", "surrogateescape")

        try:
            for _ in csv.reader(lines(), delimiter=delimiter, strict=True):
                if line_ended:
                    end = consumed
        except csv.Error as exc:
            if consumed < size:
                raise MbiasError(f"{path}: not valid CSV before its end ({exc}); cannot resume it") from None
    if end < size:
        with path.open("rb+") as handle:
            handle.truncate(end)


def _is_json_object(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError alike
        return False


def sink_of(path: Path) -> Path:
    """Where a RecordWriter appends rows for ``path``: the file itself, or for Parquet (which
    cannot be appended to) ``<path>.partial.jsonl``, turned into Parquet when the job completes."""
    return path.with_name(path.name + ".partial.jsonl") if file_format(path) == "parquet" else path


class RecordWriter:
    """Appends records to an output file as they are produced.

    JSONL and CSV are appended in place and flushed per row. Parquet cannot be appended to, so
    rows go to ``<output>.partial.jsonl`` and the Parquet file is written when the job completes.
    A CSV's header is every field seen so far: a row with a new field rewrites the file once with a
    wider header, so no row's field is dropped (records differ: a rewritten one has scores a kept
    one lacks). The folder is checked for writing before any work; ``reads`` are the command's input
    files, which it refuses to write over.
    """

    def __init__(self, path: str | Path, resume: bool = False, reads: Iterable[str | Path | None] = ()):
        self.path = Path(path)
        self.format = file_format(self.path)
        refuse_overwriting_input(self.path, reads)
        if self.path.is_dir():
            raise MbiasError(f"{self.path}: is a directory; --output takes a file")
        self.sink = sink_of(self.path)
        self.sink_format = "jsonl" if self.sink != self.path else self.format
        self.done_ids: set[str] = set()
        self._done_texts: dict[str, Any] = {}
        if resume:
            if self.sink.exists() and self.sink_format in ("csv", "tsv"):
                _drop_unfinished_row(self.sink, "\t" if self.sink_format == "tsv" else ",")
            elif self.sink.exists():
                _drop_partial_line(self.sink)
            existing = self._existing()
            if existing and "id" not in existing[0]:
                raise MbiasError(f"{self.path}: has no id column: not an output this command can resume")
            self.done_ids = {str(r["id"]) for r in existing}
            self._done_texts = {str(r["id"]): r.get("text") for r in existing}
        elif self.path.exists() or (self.sink != self.path and self.sink.exists()):
            raise MbiasError(f"{self.path}: already exists; pass --resume to continue it, or write elsewhere")
        check_writable(self.path.parent)
        self._handle = None
        self._csv: csv.DictWriter | None = None
        self._fields: list[str] = []

    def _existing(self) -> list[Record]:
        if self.sink.exists() and self.sink.stat().st_size:
            return _read_rows(self.sink, self.sink_format)
        if self.format == "parquet" and self.path.exists():
            return _read_rows(self.path, "parquet")
        return []

    def pending(self, records: list[Record]) -> list[Record]:
        """The records not yet in the output. A row already there must hold its input record's
        text: a file written from another input, or by a command that keeps no text, is refused
        rather than mixed into (its rows would pass for this input's, unscored)."""
        todo = []
        for record in records:
            rid = str(record["id"])
            if rid not in self.done_ids:
                todo.append(record)
            elif rid in self._done_texts and (self._done_texts[rid] or "") != (record.get("text") or ""):
                raise MbiasError(
                    f"{self.path}: row {rid} holds another text than the input's; it was written from "
                    "another input or by another command: choose another --output"
                )
        return todo

    def __enter__(self) -> RecordWriter:
        return self

    def write(self, record: Record) -> None:
        try:
            if self.format in ("csv", "tsv"):
                self._write_csv(_flat(record))
            else:
                self._open()
                self._handle.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
            self._handle.flush()
        except OSError as exc:
            raise MbiasError(f"{self.path}: cannot write ({exc.strerror or type(exc).__name__})") from None
        self.done_ids.add(str(record["id"]))

    def _open(self) -> None:
        if self._handle is None:
            if self.format == "parquet" and self.path.exists() and not self.sink.exists():
                # resuming a finished parquet file: move its rows back into the sink first
                existing = _read_rows(self.path, "parquet")
                with self.sink.open("w", encoding="utf-8") as out:
                    for row in existing:
                        out.write(json.dumps(row, ensure_ascii=False) + "\n")
            self._handle = self.sink.open("a", encoding="utf-8", newline="")

    def _write_csv(self, row: dict[str, Any]) -> None:
        if self._csv is None:
            self._fields = self._csv_header() or []
        new = [k for k in row if k not in self._fields]
        if new or self._csv is None:
            self._widen(self._fields + new)
        self._csv.writerow(row)

    def _widen(self, fields: list[str]) -> None:
        """(Re)open the CSV with ``fields`` as its header, rewriting the rows already there."""
        delimiter = "\t" if self.format == "tsv" else ","
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        if self.sink.exists() and self.sink.stat().st_size and fields != self._csv_header():
            with self.sink.open(encoding="utf-8", newline="") as handle:
                rows = list(csv.DictReader(handle, delimiter=delimiter))
            wider = self.sink.with_name(self.sink.name + ".widening")
            with wider.open("w", encoding="utf-8", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=fields, delimiter=delimiter)
                writer.writeheader()
                writer.writerows(rows)
            wider.replace(self.sink)
        self._open()
        self._fields = fields
        self._csv = csv.DictWriter(self._handle, fieldnames=fields, delimiter=delimiter)
        if self.sink.stat().st_size == 0:
            self._csv.writeheader()

    def _csv_header(self) -> list[str] | None:
        if self.sink.exists() and self.sink.stat().st_size:
            with self.sink.open(encoding="utf-8", newline="") as handle:
                return next(csv.reader(handle, delimiter="\t" if self.format == "tsv" else ","))
        return None

    def close(self, complete: bool = True) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        if complete and self.format == "parquet" and self.sink.exists():
            write_parquet(self.path, _read_rows(self.sink, "jsonl"))
            self.sink.unlink()

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(complete=exc_type is None)


def write_records(
    path: str | Path, records: Iterable[Record], reads: Iterable[str | Path | None] = ()
) -> None:
    """Write a whole table at once (reports, exports): into a file beside ``path`` that replaces it
    only when every record is written, so a failure leaves what was there. ``reads`` as for
    RecordWriter."""
    path = Path(path)
    fmt = file_format(path)
    if path.is_dir():
        raise MbiasError(f"{path}: is a directory, expected a file")
    refuse_overwriting_input(path, reads)
    draft = path.with_name(f".{path.name}.writing{path.suffix}")
    leftovers = (draft, sink_of(draft))
    for leftover in leftovers:
        leftover.unlink(missing_ok=True)
    try:
        with RecordWriter(draft) as writer:
            for record in records:
                writer.write(record)
        if not draft.exists():  # no record: an empty table
            if fmt == "parquet":
                write_parquet(draft, [])
            else:
                draft.write_text("", encoding="utf-8")
        draft.replace(path)
    finally:
        for leftover in leftovers:
            leftover.unlink(missing_ok=True)
