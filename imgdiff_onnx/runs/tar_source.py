"""WebDataset tar shards: samples streamed member by member, each sample a record.

The tar is read with the standard library's `tarfile` in stream mode (`r|*`: plain, gzip, bz2
or xz), one member at a time, so a shard is never held whole and a shard read from a pipe or an
object store needs no seeking. (The `webdataset` package reads tars the same way; its decoding
pipeline adds nothing this reader needs, and its error handlers drop damaged samples where this
run must name them.)

Samples follow WebDataset's key rule: a member `dir/KEY.field.ext` belongs to the sample
`dir/KEY` (the path up to the first dot of the base name) as its field `field.ext` (lower case).
The members of one sample are adjacent. A sample's images are its fields `img1.<ext>` and
`img2.<ext>` (names mappable with `--columns`); its captions come from its `json` member
(`caption1`, `caption2`, `objects1`, `objects2`, `id`; other keys pass through) or from
`caption1.txt` / `caption2.txt`. Other members are not copied into the results.

Problems of one sample (a missing image, a repeated key, members of a sample split by another
sample, a field twice, JSON that is not an object, text that is not UTF-8) are that sample's
error; a tar that stops being readable (truncated, not a tar) raises ShardError after the
samples read before it.
"""

from __future__ import annotations

import hashlib
import logging
import re
import tarfile
from collections.abc import Iterator
from typing import Any

from ..imageio import ImageBytes
from .columns import FIELDS, IMAGE_FIELDS, ColumnMap
from .jsonlines import LineError, RawLine, parse_record
from .records import InputLine, shard_line
from .shards import Shard, ShardError

log = logging.getLogger(__name__)

MAX_MEMBER_BYTES = 1 << 30  # one member held in memory at the most; a larger one is its sample's error
_KEY = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # WebDataset's base_plus_ext


def split_member(name: str) -> tuple[str, str] | None:
    """(key, field) of a member name by WebDataset's rule, or None for a name without an extension."""
    match = _KEY.match(name)
    return (match.group(1), match.group(2).lower()) if match else None


class _Sample:
    def __init__(self, key: str, index: int):
        self.key = key
        self.index = index  # 1-based sample number in the shard
        self.fields: dict[str, bytes] = {}
        self.seen: set[str] = set()
        self.problems: list[str] = []
        self.digest = hashlib.sha256(key.encode("utf-8", "surrogateescape"))

    def add(self, field: str, data: bytes | None, size: int) -> None:
        self.digest.update(f"\x00{field}\x00{size}\x00".encode("utf-8", "surrogateescape"))
        if field in self.seen:
            self.problems.append(f"field {field} twice in the sample")
            return
        self.seen.add(field)
        if data is None:
            self.problems.append(f"member {field} of {size:,} bytes is larger than {MAX_MEMBER_BYTES:,} bytes")
            return
        self.digest.update(hashlib.sha256(data).digest())
        self.fields[field] = data


def read_tar(shard: Shard, columns: ColumnMap) -> Iterator[InputLine]:
    seen: dict[str, int] = {}  # key -> its sample number, to name a key that comes again
    current: _Sample | None = None
    count = 0
    unnamed = 0
    try:
        archive = tarfile.open(shard.path, mode="r|*")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ShardError(f"not a readable tar file ({exc})") from None
    with archive:
        try:
            for member in archive:
                if not member.isfile():
                    continue
                parts = split_member(member.name)
                if parts is None:
                    unnamed += 1
                    continue
                key, field = parts
                if current is None or key != current.key:
                    if current is not None:
                        yield _line(shard, current, columns)
                    count += 1
                    current = _Sample(key, count)
                    if key in seen:
                        current.problems.append(f"key {key} already came as sample {seen[key]} (the members of one sample must be adjacent, "
                                                "and keys unique in a shard)")  # fmt: skip
                    else:
                        seen[key] = count
                data = None
                if member.size <= MAX_MEMBER_BYTES:
                    handle = archive.extractfile(member)
                    data = handle.read() if handle is not None else b""
                    if len(data) != member.size:
                        raise tarfile.ReadError(f"member {member.name} is cut short")
                current.add(field, data, member.size)
        except (tarfile.TarError, OSError, EOFError) as exc:
            where = f"after {count - 1 if current is not None else count} complete sample(s)"
            if current is not None:
                current.problems.append(f"the tar ends inside this sample ({exc})")
                yield _line(shard, current, columns)
            raise ShardError(f"unreadable {where} ({_one_line(exc)})") from None
    if current is not None:
        yield _line(shard, current, columns)
    if unnamed:
        log.warning("%s: %d member(s) without an extension are not part of any sample (WebDataset's key rule)", shard.name, unnamed)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__


def _line(shard: Shard, sample: _Sample, columns: ColumnMap) -> InputLine:
    source = {"shard": shard.name, "key": sample.key}
    problems = list(sample.problems)
    record: dict[str, Any] = {}
    if "json" in sample.fields:
        try:
            data = sample.fields["json"]
            record = parse_record(RawLine(sample.index, data, len(data)))
        except LineError as exc:
            problems.append(f"its json member: {exc}")
    values: dict[str, Any] = {}
    for field in FIELDS:
        name = columns.column(field, "webdataset")
        if field in IMAGE_FIELDS:
            found = [f for f in sample.fields if f.split(".", 1)[0] == name and f != name]
            if not found:
                problems.append(f"no {name}.<ext> member ({field})")
                values[field] = ""
            elif len(found) > 1:
                problems.append(f"{len(found)} {name}.<ext> members ({', '.join(sorted(found))})")
                values[field] = ""
            else:
                values[field] = ImageBytes(sample.fields[found[0]], f"{shard.name} {sample.key}.{found[0]}")
            continue
        if name in record:
            values[field] = record[name]
        elif f"{name}.txt" in sample.fields:
            try:
                values[field] = record[name] = sample.fields[f"{name}.txt"].decode("utf-8")
            except UnicodeDecodeError as exc:
                problems.append(f"{name}.txt is not UTF-8 (byte {exc.start + 1})")
    return shard_line(sample.index, record, values, source, sample.digest.hexdigest()[:16], "; ".join(problems) or None)
