"""Which input shards a corpus job runs, where each one's output goes, and how it is written.

One input shard (a CSV, TSV, JSONL or Parquet file) becomes one output shard, ``<stem>.parquet``
in the output directory, written whole under a hidden temporary name and then renamed into place.
"Done" is therefore just "the output file exists": a killed job leaves every finished shard
complete and at most a temporary file behind, which a resume deletes before it redoes that shard.
Outputs are named after the input's stem, not its position in the listing, so adding files to the
input directory never changes which output belongs to which input.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

from mbias.errors import MbiasError
from mbias.records import FORMATS, Record, file_format, write_parquet

PARTIAL = ".partial"


@dataclass(frozen=True)
class Shard:
    """One input file and the output file it becomes."""

    source: Path
    output: Path

    @property
    def partial(self) -> Path:
        """Where the output is written before the rename; hidden, so readers of the directory
        (pandas, pyarrow, Ray Data) skip it."""
        return self.output.with_name(f".{self.output.name}{PARTIAL}")


@dataclass(frozen=True)
class Plan:
    """The shards still to run and those whose output is already complete."""

    todo: list[Shard]
    done: list[Shard]


def find_shards(input: str) -> list[Path]:
    """The input files, sorted by name: a directory's CSV/TSV/JSONL/Parquet files (not recursive,
    hidden files skipped), a glob pattern's matches, or one file."""
    path = Path(input)
    if path.is_dir():
        files = sorted(
            p
            for p in path.iterdir()
            if p.is_file() and p.suffix.lower() in FORMATS and not p.name.startswith((".", "_"))
        )
        if not files:
            raise MbiasError(f"{input}: no .csv, .tsv, .jsonl or .parquet files in this directory")
        return files
    if path.is_file():
        file_format(path)
        return [path]
    matches = sorted(Path(p) for p in glob.glob(input) if Path(p).is_file())
    if not matches:
        raise MbiasError(f"{input}: no such file or directory, and no file matches it as a pattern")
    for match in matches:
        file_format(match)  # one line naming the first file of an unsupported type
    return matches


def plan_shards(input: str, output_dir: str | Path, resume: bool) -> Plan:
    """Pair every input shard with its output and split them into to-do and done.

    Without ``resume`` the output directory must be empty or absent (a job never overwrites);
    with it, temporary files a killed job left are deleted and their shards are to-do again.
    """
    sources = find_shards(input)
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise MbiasError(f"{out}: not a directory; with --ray, --output names a directory of Parquet shards")
    if out.exists() and any(s.resolve().parent == out.resolve() for s in sources):
        raise MbiasError(f"{out}: holds the input shards; choose another --output directory")
    by_name: dict[str, Path] = {}
    for source in sources:
        name = f"{source.stem}.parquet"
        if name in by_name:
            raise MbiasError(
                f"{by_name[name]} and {source} would both be written to {name}; "
                "give the input files distinct names"
            )
        by_name[name] = source
    if out.is_dir() and any(out.iterdir()) and not resume:
        raise MbiasError(f"{out}: not empty; pass --resume to continue it or choose another --output")
    out.mkdir(parents=True, exist_ok=True)
    shards = [Shard(source, out / name) for name, source in by_name.items()]
    for shard in shards:
        shard.partial.unlink(missing_ok=True)  # a killed job's unfinished write
    return Plan(
        todo=[s for s in shards if not s.output.exists()], done=[s for s in shards if s.output.exists()]
    )


def write_shard(shard: Shard, records: list[Record]) -> None:
    """Write one output shard whole, with the local path's Parquet writer (``records.write_parquet``),
    so a shard reads back cell for cell like ``mbias debias -i SHARD -o OUT.parquet`` run on its own;
    ``json.loads`` restores the nested fields. A struct column would keep them typed, but optional
    span keys (``reason``, ``similarity``) would come back as nulls and the two paths would disagree.
    """
    write_parquet(shard.partial, records)
    with shard.partial.open("rb") as handle:
        os.fsync(handle.fileno())  # the rename must not land before the bytes
    os.replace(shard.partial, shard.output)
