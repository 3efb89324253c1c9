"""A shard's results as Parquet (`--output-format parquet`).

The rows are the shard's results lines: each record's non-image fields as columns (of the input
Parquet shard's types where the values convert back: integers of any width, dates, times,
decimals, binary, nested types; else as Arrow infers them from the JSON values) and `imgdiff` as one struct column of a fixed type, boxes
as `list<fixed_size_list<float32, 4>>`, per-stage counts, the guard band's tally and timings as
lists of named entries (`[{name, value}]`, `[{score, scored, rescored}]`, `[{stage, seconds}]`). Loads with `pyarrow.parquet.read_table` and `datasets.load_dataset("parquet", ...)`.

A shard's results (no image bytes: a few KB a row) are converted in one piece when the shard is
committed.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path

from ..errors import RunError
from .records import RESULT_KEY


def imgdiff_type(pa):
    """The Arrow type of the `imgdiff` column."""
    return pa.struct([
        ("line", pa.int64()),
        ("input_digest", pa.string()),
        ("source", pa.struct([("shard", pa.string()), ("row", pa.int64()), ("key", pa.string())])),
        ("image_path1_resolved", pa.string()),
        ("image_path2_resolved", pa.string()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("boxes", pa.list_(pa.list_(pa.float32(), 4))),
        ("evidence", pa.list_(pa.struct([
            ("candidate", pa.int64()), ("source", pa.int64()), ("word1", pa.string()), ("itm1", pa.float64()),
            ("word2", pa.string()), ("itm2", pa.float64()), ("crop_similarity", pa.float64()),
        ]))),
        ("objects1", pa.list_(pa.string())),
        ("objects2", pa.list_(pa.string())),
        ("pair_similarity", pa.float64()),
        ("exit_reason", pa.string()),
        ("counts", pa.list_(pa.struct([("name", pa.string()), ("value", pa.int64())]))),
        ("band", pa.list_(pa.struct([("score", pa.string()), ("scored", pa.int64()), ("rescored", pa.int64())]))),
        ("times", pa.list_(pa.struct([("stage", pa.string()), ("seconds", pa.float64())]))),
    ])  # fmt: skip


def _listed(name: str, value: object) -> object:
    """The open-ended mappings (counts, band, times) as lists of named entries: Hugging Face
    datasets has no map type."""
    if not isinstance(value, dict):
        return value
    if name == "counts":
        return [{"name": k, "value": v} for k, v in value.items()]
    if name == "band":
        return [{"score": k} | v for k, v in value.items()]
    if name == "times":
        return [{"stage": k, "seconds": v} for k, v in value.items()]
    return value


_ENTRY_KEYS = {"counts": ("name", "value"), "times": ("stage", "seconds")}


def read_results_parquet(path: Path) -> Iterator[dict]:
    """The rows of a results Parquet file as a JSON Lines run's lines hold them (boxes as float32
    values), row group by row group."""
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # noqa: BLE001 - a damaged or foreign file: one line
        raise RunError(f"{path}: not a readable results Parquet file ({' '.join(str(exc).split())[:200]})") from None
    for group in range(parquet.metadata.num_row_groups):
        for row in parquet.read_row_group(group).to_pylist():
            fields = row.get(RESULT_KEY)
            if not isinstance(fields, dict):
                raise RunError(f"{path} is not a results file of `run`: it has no {RESULT_KEY} column")
            try:
                row[RESULT_KEY] = _as_line(fields)
            except (TypeError, KeyError, AttributeError):
                raise RunError(f"{path}: its {RESULT_KEY} column is not laid out as this version writes it") from None
            yield row


def _as_line(fields: dict) -> dict:
    """The inverse of the writer's layout: mappings back from lists, absent fields (null) left out."""
    keep_null = ("pair_similarity", "exit_reason") if fields.get("status") == "ok" else ()
    out = {}
    for key, value in fields.items():
        if value is None and key not in keep_null:
            continue
        if key in _ENTRY_KEYS:
            name, item = _ENTRY_KEYS[key]
            value = {e[name]: e[item] for e in value}
        elif key == "band":
            value = {e["score"]: {"scored": e["scored"], "rescored": e["rescored"]} for e in value}
        elif key == "source":
            value = {k: v for k, v in value.items() if v is not None}
        out[key] = value
    return out


def _typed(pa, values: list, type_):
    """A pass-through column's JSON values as the Arrow type the input had (binary from its base64
    text, dates, times and decimals from their text), or None where they do not convert."""
    try:
        if pa.types.is_binary(type_) or pa.types.is_large_binary(type_) or pa.types.is_fixed_size_binary(type_):
            return pa.array([None if v is None else base64.b64decode(v) for v in values], type=type_)
        if pa.types.is_temporal(type_) or pa.types.is_decimal(type_):
            return pa.array([None if v is None else str(v) for v in values], type=pa.string()).cast(type_)
        return pa.array(values, type=type_)
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        return None


def parquet_schema(path: Path):
    """The Arrow schema of a Parquet file (an input shard, or results being retuned), whose
    pass-through columns keep their types in Parquet results; None for another file or one whose
    footer cannot be read (its results then take the types their values give)."""
    if Path(path).suffix.lower() != ".parquet":
        return None
    import pyarrow.parquet as pq

    try:
        return pq.read_schema(path)
    except Exception:  # noqa: BLE001 - a damaged shard: its own error is recorded where it is read
        return None


def write_results_parquet(lines_path: Path, out: Path, schema=None) -> None:
    """The results lines of `lines_path` as a Parquet file at `out` (fsync'ed). `schema` (an
    Arrow schema: the input Parquet shard's, or the results file being retuned) gives the types
    of the pass-through columns it names; the others are typed from their JSON values."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = []
    with open(lines_path, "rb") as handle:
        for raw in handle:
            rows.append(json.loads(raw))
    kind = imgdiff_type(pa)
    names = {kind.field(i).name for i in range(kind.num_fields)}
    results = []
    for row in rows:
        fields = row.pop(RESULT_KEY)
        unknown = set(fields) - names
        if unknown:  # internal: the results line and this type must agree
            raise RunError(f"{lines_path}: results field(s) {', '.join(sorted(unknown))} have no Parquet column; please report it")
        results.append({k: _listed(k, v) for k, v in fields.items()})
    column = pa.array(results, type=kind)
    passed = pa.Table.from_pylist(rows) if any(rows) else pa.table({})
    if schema is not None:
        for i, name in enumerate(passed.column_names):
            if name in schema.names and name != RESULT_KEY and passed.column(i).type != schema.field(name).type:
                typed = _typed(pa, passed.column(i).to_pylist(), schema.field(name).type)
                if typed is not None:
                    passed = passed.set_column(i, pa.field(name, typed.type), typed)
    table = passed.append_column(RESULT_KEY, column) if passed.num_columns else pa.table({RESULT_KEY: column})
    with open(out, "wb") as handle:
        pq.write_table(table, handle)
        handle.flush()
        os.fsync(handle.fileno())
