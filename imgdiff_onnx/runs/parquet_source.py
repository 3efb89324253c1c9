"""Parquet shards: rows streamed in byte-capped batches, each row a record.

An image column is one of
- a Hugging Face `Image` struct `{bytes, path}`: the bytes when present, else the path;
- plain binary (img2dataset's `jpg`), `binary` or `large_binary`;
- a path string, resolved against `--image-root` or else the Parquet file's folder.
Captions are strings, object lists lists of strings (the engine checks both, per record). Every
other column passes through to the results line: binary cells as base64 text, dates and times
in ISO 8601, decimals as text, NaN and infinities as null (JSON has neither).

Memory: a row group is read in batches of at most `BATCH_BYTES` of column data (estimated from
the row group's own size per row), its column chunks through a 1 MB buffer, never the whole
file nor a whole row group; image row groups of a gigabyte exist. What no reader can bound is a
page: Arrow decodes a data page whole, and a writer with pyarrow's defaults closes a page only
every 1,024 rows, so an image column's pages can hold 1,024 images (~140 MB each of two image
columns for 80 KB JPEGs, measured: benchmarks/README.md). `pack` writes pages of 16 rows.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import hashlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..imageio import ImageBytes
from .columns import FIELDS, IMAGE_FIELDS, ColumnMap
from .records import InputLine, shard_line
from .shards import Shard, ShardError

BATCH_BYTES = 16 << 20  # column data per read batch (64 MB measured +75 MB peak for no CPU gain)
READ_BUFFER = 1 << 20  # bytes read from a column chunk at a time
MAX_BATCH_ROWS = 256


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise ShardError("reading Parquet needs pyarrow: pip install pyarrow (or the package's datasets extra)") from None
    return pyarrow


def _describe(schema: Any) -> str:
    return ", ".join(f"{field.name}: {field.type}" for field in schema)


def _image_kind(pa: Any, column: str, type_: Any) -> str:
    """"struct", "binary" or "path"; raises ShardError for any other type."""
    if pa.types.is_struct(type_):
        names = {type_.field(i).name: type_.field(i).type for i in range(type_.num_fields)}
        binary_ok = "bytes" not in names or pa.types.is_binary(names["bytes"]) or pa.types.is_large_binary(names["bytes"])
        path_ok = "path" not in names or pa.types.is_string(names["path"]) or pa.types.is_large_string(names["path"])
        if ("bytes" in names or "path" in names) and binary_ok and path_ok:
            return "struct"
    elif pa.types.is_binary(type_) or pa.types.is_large_binary(type_):
        return "binary"
    elif pa.types.is_string(type_) or pa.types.is_large_string(type_):
        return "path"
    raise ShardError(f"column {column} has type {type_}; an image column is a struct {{bytes, path}}, binary, or a path string")


def read_parquet(shard: Shard, columns: ColumnMap, image_root: Path | None) -> Iterator[InputLine]:
    pa = _pyarrow()
    try:
        # buffer_size: a column chunk is read through a buffer, page by page, not whole (a 1 GB row
        # group otherwise costs 1 GB of memory: measured, benchmarks/README.md)
        parquet = pa.parquet.ParquetFile(shard.path, pre_buffer=False, buffer_size=READ_BUFFER)
    except Exception as exc:  # noqa: BLE001 - ArrowInvalid / OSError: a broken footer, not Parquet at all
        raise ShardError(f"not a readable Parquet file ({_first_line(exc)})") from None
    schema = parquet.schema_arrow
    names = set(schema.names)
    named = {field: columns.column(field, "parquet") for field in FIELDS}
    missing = [f"{named[f]} ({f})" for f in IMAGE_FIELDS if named[f] not in names]
    missing += [f"{named[f]} ({f})" for f in FIELDS if columns.is_given(f) and named[f] not in names and f not in IMAGE_FIELDS]
    if missing:
        raise ShardError(f"no column {', '.join(missing)}; its columns are {_describe(schema)}")
    kinds = {f: _image_kind(pa, named[f], schema.field(named[f]).type) for f in IMAGE_FIELDS}
    present = {f: c for f, c in named.items() if c in names}
    images = {named[f] for f in IMAGE_FIELDS if kinds[f] != "path"}  # bytes are not copied; paths pass through
    base = image_root if image_root is not None else shard.path.resolve().parent
    metadata = parquet.metadata
    row = 0
    for group in range(metadata.num_row_groups):
        info = metadata.row_group(group)
        per_row = info.total_byte_size / max(1, info.num_rows)
        batch_rows = int(max(1, min(MAX_BATCH_ROWS, BATCH_BYTES // max(1.0, per_row))))
        try:
            batches = parquet.iter_batches(batch_size=batch_rows, row_groups=[group], use_threads=False)
            for batch in batches:
                data = {name: batch.column(i).to_pylist() for i, name in enumerate(batch.schema.names)}
                for i in range(batch.num_rows):
                    row += 1
                    yield _row(shard, row, {name: data[name][i] for name in data}, present, kinds, images, base)
                del data, batch
        except ShardError:
            raise
        except Exception as exc:  # noqa: BLE001 - a damaged page or column chunk: the rows before it are kept
            raise ShardError(f"unreadable after row {row} of {metadata.num_rows} ({_first_line(exc)})") from None


def _row(shard: Shard, number: int, cells: dict[str, Any], present: dict[str, str], kinds: dict[str, str],
         images: set[str], base: Path) -> InputLine:  # fmt: skip
    source = {"shard": shard.name, "row": number}
    record = {name: _jsonable(value) for name, value in cells.items() if name not in images}
    digest = hashlib.sha256()
    digest.update(repr(sorted(record.items())).encode("utf-8", "surrogatepass"))
    values: dict[str, Any] = {f: cells[c] for f, c in present.items() if f not in IMAGE_FIELDS}
    problems = []
    for field in IMAGE_FIELDS:
        value, problem = _image(shard, number, field, present[field], kinds[field], cells[present[field]], base)
        digest.update(hashlib.sha256(value.data if isinstance(value, ImageBytes) else str(value).encode("utf-8", "surrogatepass")).digest())
        values[field] = value
        if problem:
            problems.append(problem)
    return shard_line(number, record, values, source, digest.hexdigest()[:16], "; ".join(problems) or None)


def _image(shard: Shard, number: int, field: str, column: str, kind: str, cell: Any, base: Path) -> tuple[Any, str | None]:
    """(ImageBytes or a path, None) or (an empty value, what is wrong with the cell)."""
    name = f"{shard.name} row {number} {column}"
    if kind == "struct" and isinstance(cell, dict):
        data, path = cell.get("bytes"), cell.get("path")
        if data:
            return ImageBytes(data, name), None
        cell = path
        kind = "path"
    if cell is None:
        return "", f"{field} ({column}) is null"
    if kind == "binary":
        return (ImageBytes(cell, name), None) if cell else ("", f"{field} ({column}) is empty")
    if not cell:
        return "", f"{field} ({column}) is an empty path"
    if "\x00" in cell:
        return "", f"{field} ({column}) holds a NUL character, which no file name can"
    path = Path(cell)
    return (path if path.is_absolute() else base / path), None


def _jsonable(value: Any) -> Any:
    """A cell as JSON can carry it (see the module's docstring)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, (decimal.Decimal, datetime.timedelta)):
        return str(value)
    return value


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]
