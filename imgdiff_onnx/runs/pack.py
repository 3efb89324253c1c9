"""`pack`: a JSON Lines dataset and its image files as shards with the image bytes inside.

Parquet shards hold each image as a Hugging Face `Image` struct `{bytes, path}` (the path is the
file's name, for reference) in the columns `image_path1` and `image_path2`, and every other
field of the record as a column. WebDataset shards hold a sample per record: `KEY.img1.<ext>`,
`KEY.img2.<ext>` (the files' bytes and suffixes) and `KEY.json` (every other field, captions
included); KEY is the record's line number, nine digits. Shards are `00000.parquet`,
`00001.parquet`, ... (or `.tar`) of `pairs_per_shard` records each, each written under a
temporary name and renamed when complete.

A record that cannot be packed (a line that is not a record, a missing or unreadable image
file) is named in the log and left out; the count is returned. `run` on the shards gives the
results `run` gives on the JSON Lines file, apart from where each record came from.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import ParameterError, RunError
from .jsonl import input_batches
from .jsonlines import count_lines
from .outfolder import refuse_foreign
from .progress import ProgressBar
from .records import InputLine
from ..settings import PAIRS_PER_SHARD

log = logging.getLogger(__name__)

PACK_FORMATS = ("parquet", "webdataset")
ROW_GROUP_BYTES = 64 << 20  # image bytes per Parquet row group
PAGE_ROWS = 16  # rows per Parquet data page at most (a reader decodes a page whole)
_SHARD_NAME = re.compile(r"^\d{5,}\.(parquet|tar)$")
MARKER = ".imgdiff-pack"


@dataclass(frozen=True)
class PackOptions:
    format: str = "parquet"
    pairs_per_shard: int = PAIRS_PER_SHARD
    progress: bool = True

    def __post_init__(self) -> None:
        if self.format not in PACK_FORMATS:
            raise ParameterError(f"--format must be one of {', '.join(PACK_FORMATS)}, got {self.format!r}", "format")
        if self.pairs_per_shard < 1:
            raise ParameterError(f"--pairs-per-shard must be 1 or more, got {self.pairs_per_shard}", "pairs_per_shard")


def _claim(out: Path) -> None:
    """`out` is new, empty, or an earlier pack's folder (whose shards are removed); else refused."""
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out} is a file; give a folder")
    if out.is_dir():
        entries = list(out.iterdir())
        ours = (out / MARKER).is_file()
        refuse_foreign("--out", out, [p.name for p in entries if p.name != MARKER and not (ours and _SHARD_NAME.match(p.name))])
        for p in entries:
            if p.name != MARKER:
                p.unlink()
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / MARKER).write_text("pack\n", encoding="utf-8")
    except OSError as exc:
        raise RunError(f"--out {out}: cannot write there ({exc.strerror or exc})") from None


def _packable(lines: Iterator[list[InputLine]]) -> Iterator[tuple[InputLine, bytes, bytes]]:
    """Records with both images read, in order; the others are named in the log."""
    for batch in lines:
        for line in batch:
            if line.pair is None:
                log.warning("%s: not packed: %s", line.key, line.error)
                continue
            try:
                images = (Path(line.pair.image1).read_bytes(), Path(line.pair.image2).read_bytes())  # type: ignore[arg-type]
            except OSError as exc:
                log.warning("%s: not packed: cannot read %s (%s)", line.key, exc.filename, exc.strerror or exc)
                continue
            yield line, images[0], images[1]


def _fields(line: InputLine) -> dict:
    assert line.record is not None
    return {k: v for k, v in line.record.items() if k not in ("image_path1", "image_path2")}


def pack(input_path: Path, out: Path, options: PackOptions) -> dict[str, int]:
    """Pack `input_path` into shards in `out`; returns counts of records packed, left out, and shards."""
    if not input_path.is_file():
        raise RunError(f"input file not found: {input_path}")
    _claim(out)
    total = count_lines(input_path)
    bar = ProgressBar(total, options.progress)
    packed = shards = 0
    records = _packable(input_batches(input_path, 0, None, 64))
    write = _write_parquet if options.format == "parquet" else _write_tar
    suffix = ".parquet" if options.format == "parquet" else ".tar"
    try:
        while True:
            chunk = _take(records, options.pairs_per_shard)
            if not chunk:
                break
            target = out / f"{shards:05d}{suffix}"
            tmp = target.with_name(f".{target.name}.tmp")
            write(chunk, tmp)
            os.replace(tmp, target)
            shards += 1
            packed += len(chunk)
            bar.update(len(chunk))
    finally:
        bar.close()
    return {"packed": packed, "left_out": total - packed, "shards": shards}


def _take(records: Iterator[tuple[InputLine, bytes, bytes]], n: int) -> list[tuple[InputLine, bytes, bytes]]:
    chunk = []
    for item in records:
        chunk.append(item)
        if len(chunk) == n:
            break
    return chunk


def _write_parquet(chunk: list[tuple[InputLine, bytes, bytes]], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    others = pa.Table.from_pylist([_fields(line) for line, _, _ in chunk]).schema
    schema = pa.schema([pa.field("image_path1", image), pa.field("image_path2", image), *others])
    # pages of 16 rows: a reader decodes a page whole (pyarrow's default closes one every 1,024 rows)
    with pq.ParquetWriter(path, schema, write_batch_size=PAGE_ROWS) as writer:
        group: list[dict] = []
        size = 0
        for line, data1, data2 in chunk:
            assert line.pair is not None
            group.append({"image_path1": {"bytes": data1, "path": Path(line.pair.image1).name},  # type: ignore[arg-type]
                          "image_path2": {"bytes": data2, "path": Path(line.pair.image2).name}} | _fields(line))  # type: ignore[arg-type]
            size += len(data1) + len(data2)
            if size >= ROW_GROUP_BYTES:
                writer.write_table(pa.Table.from_pylist(group, schema=schema))
                group, size = [], 0
        if group:
            writer.write_table(pa.Table.from_pylist(group, schema=schema))


def _write_tar(chunk: list[tuple[InputLine, bytes, bytes]], path: Path) -> None:
    with tarfile.open(path, "w") as archive:
        for line, data1, data2 in chunk:
            assert line.pair is not None
            key = f"{line.number:09d}"
            members = []
            for field, source, data in (("img1", line.pair.image1, data1), ("img2", line.pair.image2, data2)):
                ext = Path(str(source)).suffix.lower().lstrip(".") or "bin"
                members.append((f"{key}.{field}.{ext}", data))
            members.append((f"{key}.json", json.dumps(_fields(line), ensure_ascii=False).encode("utf-8")))
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mode = 0o644
                archive.addfile(info, io.BytesIO(data))
