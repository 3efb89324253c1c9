"""Reading a shard run's output folder: its record, its results rows in shard order, and each
row's images from the shard it came from (for the report). No engine, no onnxruntime."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import RunError
from .columns import ColumnMap
from .records import RESULT_KEY, InputLine, source_text
from .shards import Shard, ShardError, list_shards, read_shard

RECORD = ".imgdiff-run.json"
FORMAT = "imgdiff-onnx-shards/1"
ERRORS = ".imgdiff-shard-errors.jsonl"  # the shards that could not be read to their end


def read_run_record(output: Path) -> dict | None:
    """The record of the shard run that wrote the folder `output`, None when it has none."""
    path = output / RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RunError(f"{path}: the run record cannot be read ({exc}); write to another --output") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT or not isinstance(record.get("shards"), dict):
        raise RunError(f"{path}: not a shard run record of this tool; write to another --output")
    return record


def is_results_folder(path: Path) -> bool:
    return path.is_dir() and (path / RECORD).is_file()


def committed_results(folder: Path) -> Iterator[tuple[str, Path]]:
    """(shard name, results file) of every committed shard of the run in `folder`, in shard order."""
    record = read_run_record(folder)
    if record is None:
        raise RunError(f"{folder} is not the output folder of a shard run (no {RECORD})")
    for name in sorted(record["shards"]):
        entry = record["shards"][name]
        written = str(entry.get("results", "")) if isinstance(entry, dict) else ""
        path = folder / written
        if written and path.is_file() and path.resolve().is_relative_to(folder.resolve()):
            yield name, path


def results_rows(folder: Path) -> Iterator[tuple[str, dict]]:
    """(shard name, results row) of every committed shard, in shard order, rows in order."""
    for name, path in committed_results(folder):
        if path.suffix == ".parquet":
            from .parquet_sink import read_results_parquet

            for row in read_results_parquet(path):
                yield name, row
        else:
            with open(path, encoding="utf-8") as handle:
                for line in handle:
                    yield name, json.loads(line)


class ShardImages:
    """The images of results rows, read again from their shards (sequentially: rows come in order)."""

    def __init__(self, folder: Path):
        record = read_run_record(folder) or {}
        settings = record.get("settings", {})
        self._columns = ColumnMap.parse(settings.get("columns") or None)
        root = settings.get("image_root")
        self._image_root = Path(root) if root else None
        try:
            self._shards = {s.name: s for s in list_shards(settings.get("input", ""))}
        except RunError:
            self._shards = {}
        self._reader: tuple[str, Iterator[InputLine]] | None = None

    def pair(self, source: dict[str, Any]) -> tuple[Any, Any]:
        """(image 1, image 2) of the record at `source` ({"shard", "row"} or {"shard", "key"}),
        as paths or ImageBytes; raises ShardError when the shard no longer has it."""
        name = source.get("shard")
        if name not in self._shards:
            raise ShardError(f"shard {name} is no longer where the run read it")
        if self._reader is None or self._reader[0] != name:
            self._reader = (name, read_shard(self._shards[name], self._columns, self._image_root))
        for line in self._reader[1]:
            if line.source == source:
                if line.pair is None:
                    raise ShardError(f"{name}: {line.error}")
                return line.pair.image1, line.pair.image2
        self._reader = None
        raise ShardError(f"shard {name} has no record {source.get('key', source.get('row'))} any more")


def row_key(row: dict) -> str:
    """What names a results row of a folder: its id, else its shard and row or key."""
    source = (row.get(RESULT_KEY) or {}).get("source")
    return str(row.get("id", source_text(source) if isinstance(source, dict) and "shard" in source else "?"))
