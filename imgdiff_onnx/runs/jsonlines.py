"""JSON Lines framing: input bytes to records, results to strict JSON lines.

Input: the file is read as bytes and split on `\\n` only (a raw CR inside a line is JSON
whitespace, not a line break); one UTF-8 BOM at the start of the file is dropped; each line is
decoded as strict UTF-8. Before a line is parsed, what it may cost is bounded: its length
(`MAX_LINE_BYTES`, longer lines are skipped without being held in memory), its nesting depth
(`MAX_DEPTH`) and the digits of its integers (`MAX_INT_DIGITS`). NaN, Infinity, numbers that
overflow to infinity and strings holding a lone UTF-16 surrogate are not JSON text a results
line could carry, so they are refused too. Every refusal is a `LineError` saying what is wrong;
the caller turns it into that line's error result, and the run goes on.

Output: `strict_dumps` writes JSON that every reader accepts (no NaN or Infinity; a string that
cannot be UTF-8, which only text of this program could be, has its surrogates escaped).

Standard library only.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import operator
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from ..errors import ImgDiffError
from ..settings import MAX_INT_DIGITS

MAX_LINE_BYTES = 8 * 1024 * 1024  # one record: captions of ~1 million characters still fit
MAX_DEPTH = 64  # nested arrays/objects in one record
BOM = b"\xef\xbb\xbf"
JSON_SPACE = b" \t\r\n"
_CHUNK = 1 << 20


class LineError(ImgDiffError, ValueError):
    """One input line cannot be read as a record; the message says why (without the line number)."""


class RawLine(NamedTuple):
    """One input line: its bytes without the `\n` (None when it was too long to keep), and its
    length. `digest` is the digest of those bytes without surrounding JSON whitespace (results
    lines carry it, so that a resume checks it continues the same input); computed when asked
    (a too-long line's is computed while it is skipped)."""

    number: int  # 1-based
    data: bytes | None
    length: int  # bytes, without the line break
    skipped_digest: str = ""

    @property
    def digest(self) -> str:
        return line_digest(self.data) if self.data is not None else self.skipped_digest


def line_digest(data: bytes) -> str:
    """Short digest of one input line (without surrounding JSON whitespace)."""
    return hashlib.sha256(data.strip(JSON_SPACE)).hexdigest()[:16]


def read_lines(path: Path, skip: int = 0, limit: int | None = None, max_bytes: int = MAX_LINE_BYTES) -> Iterator[RawLine]:
    """The lines of `path` after the first `skip`, up to line `limit`. A last line without a
    line break counts; an empty file has no lines. Skipped lines are read but not kept."""
    with open(path, "rb") as handle:
        number = 0
        first = True
        while limit is None or number < limit:
            line = handle.readline(max_bytes + 1)
            if not line:
                return
            if first:
                first = False
                if line.startswith(BOM):
                    line = line[len(BOM) :]
            number += 1
            ended = line.endswith(b"\n")
            if ended or len(line) <= max_bytes:
                data = line[:-1] if ended else line
                if number > skip:
                    yield RawLine(number, data, len(data))
                continue
            # too long: hash and count the rest without holding it (the digest only has to be
            # the same every time the file is read)
            digest, length = hashlib.sha256(line), len(line)
            while True:
                chunk = handle.readline(_CHUNK)
                if not chunk:
                    break
                if chunk.endswith(b"\n"):
                    length += len(chunk) - 1
                    digest.update(chunk[:-1])
                    break
                length += len(chunk)
                digest.update(chunk)
            if number > skip:
                yield RawLine(number, None, length, digest.hexdigest()[:16])


def count_lines(path: Path) -> int:
    """Lines as `read_lines` counts them (a last line without a line break counts)."""
    count, last = 0, b"\n"
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            count += block.count(b"\n")
            last = block[-1:]
    return count + (last != b"\n")


# a JSON string token (escapes included), to find brackets outside strings
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_OPENING = bytes(range(256)).translate(None, b"[{")  # every byte but the opening brackets
_STEPS = bytes.maketrans(b"[{]}", b"\x02\x02\x00\x00")  # depth steps + 1, so that bytes hold them
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[{]}")


def nesting_depth(outside_strings: bytes) -> int:
    """Deepest nesting of arrays and objects, counted in C-level iterators (brackets inside
    strings removed beforehand)."""
    steps = outside_strings.translate(_STEPS, _NOT_BRACKETS)
    return max(map(operator.sub, itertools.accumulate(steps), itertools.count(1)), default=0)


def _refuse_constant(name: str) -> Any:
    raise LineError(f"{name} is not JSON (a results line could not carry it)")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise LineError(f"the number {text[:40]}{'...' if len(text) > 40 else ''} is too large for a 64-bit float")
    return value


def bounded_int(text: str) -> int:
    """json's parse_int: an integer of at most MAX_INT_DIGITS digits, else LineError."""
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise LineError(f"an integer of {len(text.lstrip('-')):,} digits (limit {MAX_INT_DIGITS})")
    return int(text)


_JSON_NAMES = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "true or false", type(None): "null"}


def parse_record(line: RawLine, max_bytes: int = MAX_LINE_BYTES) -> dict[str, Any]:
    """The JSON object of one line; raises LineError saying what is wrong."""
    if line.data is None or line.length > max_bytes:
        raise LineError(f"line of {line.length:,} bytes (limit {max_bytes:,} bytes)")
    data = line.data
    if not data.strip(JSON_SPACE):
        raise LineError("empty line (expected a JSON object)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LineError(f"not UTF-8 (byte 0x{data[exc.start]:02x} at byte {exc.start + 1})") from None
    if len(data.translate(None, _OPENING)) > MAX_DEPTH:  # enough brackets to be too deep: count those outside strings
        depth = nesting_depth(_STRING.sub(b'""', data))
        if depth > MAX_DEPTH:
            raise LineError(f"nested {depth:,} levels deep (limit {MAX_DEPTH})")
    try:
        record = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float, parse_int=bounded_int)
    except json.JSONDecodeError as exc:
        raise LineError(f"invalid JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:  # pragma: no cover - the depth check comes first
        raise LineError(f"nested too deep (limit {MAX_DEPTH})") from None
    if not isinstance(record, dict):
        raise LineError(f"expected a JSON object, got {_JSON_NAMES.get(type(record), type(record).__name__)}")
    try:
        json.dumps(record, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = exc.object[exc.start : exc.end]
        raise LineError(f"a string holds a lone UTF-16 surrogate ({bad.encode('unicode_escape').decode()}), which is not Unicode text") from None
    return record


def strict_dumps(value: Any) -> str:
    """One line of JSON every reader accepts: raises ValueError on NaN or Infinity; a lone
    surrogate (from text that was never UTF-8) is written as its \\u escape."""
    text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(value, ensure_ascii=True, allow_nan=False)
    return text
