"""Shard inputs: which files `--input` names, in what order, and what each one is.

`--input` names one shard file, a folder of them (searched recursively, hidden files left
out), a glob (`data/*.parquet`) or a brace range (`shards-{00000..00099}.tar`, also lists:
`{a,b}`). A shard's format comes from its name: `.parquet` (Parquet), `.tar` (WebDataset), or
`.jsonl` (JSON Lines records naming image files). Shards run in the order of their names.

Each shard is read as a stream of records (`read_shard`): the one shape the run loop sees,
whatever the format. A shard that cannot be read to its end raises `ShardError` after the
records read before the damage (they are kept).

Standard library only; the Parquet reader needs pyarrow (the `datasets` extra), imported when a
Parquet shard is read.
"""

from __future__ import annotations

import glob
import itertools
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import RunError
from .columns import ColumnMap
from .records import InputLine

log = logging.getLogger(__name__)

FORMATS = {".parquet": "parquet", ".tar": "webdataset", ".jsonl": "jsonl"}
MAX_SHARDS = 1_000_000  # one listing's worth; more is a mistake in the pattern
_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")


class ShardError(RunError):
    """A shard cannot be read (any further): the run records it and goes on with the next shard."""


@dataclass(frozen=True)
class Shard:
    path: Path
    name: str  # relative to the input's root: names its results file
    format: str  # "parquet", "webdataset" or "jsonl"

    def identity(self) -> dict[str, int]:
        """What says the shard is the one a run started on: its size and modification time."""
        st = self.path.stat()
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}

    def results_name(self, suffix: str) -> str:
        """The shard's results file: its name with `suffix` for its format's suffix."""
        return self.name[: -len(Path(self.name).suffix)] + suffix


def shard_format(path: str | Path) -> str | None:
    return FORMATS.get(Path(path).suffix.lower())


def is_shard_input(spec: str | Path) -> bool:
    """Does `--input` name shards (a run into a folder) rather than one JSON Lines file?"""
    text = str(spec)
    path = Path(text)
    if path.is_dir() or _BRACE.search(text) or glob.has_magic(text):
        return True
    return shard_format(path) in ("parquet", "webdataset")


def expand_braces(pattern: str) -> list[str]:
    """`a{1..3}b` -> a1b a2b a3b (zero padding kept: {00..10}), `{x,y}` -> x y; nested groups expand one by one."""
    match = _BRACE.search(pattern)
    if match is None:
        return [pattern]
    body = match.group(1)
    found = _RANGE.match(body)
    if found:
        a, b = found.group(1), found.group(2)
        width = len(a) if a.lstrip("-").startswith("0") and len(a) > 1 else 0
        start, stop = int(a), int(b)
        if abs(stop - start) >= MAX_SHARDS:
            raise RunError(f"--input {pattern}: the range {{{body}}} names more than {MAX_SHARDS:,} shards")
        step = 1 if stop >= start else -1
        items = [str(i).zfill(width) for i in range(start, stop + step, step)]
    else:
        items = body.split(",")
    head, tail = pattern[: match.start()], pattern[match.end() :]
    out: list[str] = []
    for item in items:
        out.extend(expand_braces(head + item + tail))
        if len(out) > MAX_SHARDS:
            raise RunError(f"--input {pattern} names more than {MAX_SHARDS:,} shards")
    return out


def list_shards(spec: str | Path) -> list[Shard]:
    """The shards `--input` names, sorted by name; raises RunError for a pattern that names none
    or a named file that does not exist."""
    text = str(spec)
    path = Path(text)
    if path.is_dir():
        root = path
        files = sorted(p for p in path.rglob("*") if p.is_file() and not _hidden(p.relative_to(path)) and shard_format(p))
        if not files:
            raise RunError(f"--input {spec}: the folder holds no shard ({', '.join('*' + s for s in FORMATS)})")
    elif _BRACE.search(text) or glob.has_magic(text):
        names: list[str] = []
        for pattern in expand_braces(text):
            names.extend(glob.glob(pattern) if glob.has_magic(pattern) else [pattern])
        missing = [n for n in names if not os.path.exists(n)]
        if missing:
            raise RunError(f"--input {spec}: {len(missing)} of the {len(names)} names do not exist, e.g. {missing[0]}")
        files = sorted({Path(n) for n in names if Path(n).is_file()})
        if not files:
            raise RunError(f"--input {spec}: no file matches")
        root = _common_root(files)
    else:
        if not path.is_file():
            raise RunError(f"input file not found: {spec}")
        files, root = [path], path.parent
    shards = []
    for file in files:
        fmt = shard_format(file)
        if fmt is None:
            raise RunError(f"--input {spec}: {file} is not a shard ({', '.join('*' + s for s in FORMATS)})")
        if not os.access(file, os.R_OK):
            raise RunError(f"--input {spec}: {file} is not readable (permission denied)")
        shards.append(Shard(file, file.relative_to(root).as_posix(), fmt))
    return sorted(shards, key=lambda s: s.name)


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def _common_root(files: list[Path]) -> Path:
    parents = [str(f.absolute().parent) for f in files]
    root = Path(os.path.commonpath(parents))
    return root if all(f.is_absolute() for f in files) else Path(os.path.relpath(root))


def read_shard(shard: Shard, columns: ColumnMap, image_root: Path | None) -> Iterator[InputLine]:
    """The shard's records in order, each an InputLine (its pair, or what is wrong with it) whose
    `source` names the shard and row or key; raises ShardError where the shard stops being readable."""
    if shard.format == "parquet":
        from .parquet_source import read_parquet

        return read_parquet(shard, columns, image_root)
    if shard.format == "webdataset":
        from .tar_source import read_tar

        return read_tar(shard, columns)
    return _read_jsonl(shard)


def input_lines(spec: str | Path, limit: int | None = None) -> Iterator[InputLine]:
    """The records of one JSON Lines file or of the shards `spec` names, in order, at most `limit`;
    a shard that stops being readable ends its records (logged) and the next shard follows."""
    if is_shard_input(spec):
        lines = _every_shards_lines(list_shards(spec))
    else:
        lines = _read_jsonl(Shard(Path(spec), Path(spec).name, "jsonl"), sourced=False)
    return itertools.islice(lines, limit)


def _every_shards_lines(shards: list[Shard]) -> Iterator[InputLine]:
    for shard in shards:
        try:
            yield from read_shard(shard, ColumnMap(), None)
        except ShardError as exc:
            log.warning("shard %s: %s", shard.name, exc)


def _read_jsonl(shard: Shard, sourced: bool = True) -> Iterator[InputLine]:
    """A JSON Lines file's records (relative image paths against its folder); `sourced`: each
    names the shard and row it came from, as a shard's records do."""
    from .jsonlines import read_lines
    from .records import parse_line

    base = shard.path.resolve().parent
    try:
        for raw in read_lines(shard.path):
            line = parse_line(raw, base)
            if sourced:
                line.source = {"shard": shard.name, "row": raw.number}
            yield line
    except OSError as exc:
        raise ShardError(f"cannot read it ({exc.strerror or exc})") from None
