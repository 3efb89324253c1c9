"""A shard's results as Parquet (`--output-format parquet`).

The rows are the shard's results lines: each record's non-image fields as columns (types as
Arrow infers them from the JSON values) and `imgdiff` as one struct column of a fixed type, boxes
as `list<fixed_size_list<float32, 4>>`, per-stage counts, the guard band's tally and timings as
lists of named entries (`[{name, value}]`, `[{score, scored, rescored}]`, `[{stage, seconds}]`). Loads with `pyarrow.parquet.read_table` and `datasets.load_dataset("parquet", ...)`.

A shard's results (no image bytes: a few KB a row) are converted in one piece when the shard is
committed.
"""

from __future__ import annotations

import json
import os
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


def write_results_parquet(lines_path: Path, out: Path) -> None:
    """The results lines of `lines_path` as a Parquet file at `out` (fsync'ed)."""
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
    table = passed.append_column(RESULT_KEY, column) if passed.num_columns else pa.table({RESULT_KEY: column})
    with open(out, "wb") as handle:
        pq.write_table(table, handle)
        handle.flush()
        os.fsync(handle.fileno())
