"""Data-Juicer records <-> engine: parse one JSONL line into a PairInput, turn an outcome into fields.

Shared by the single-process JSONL run, the Ray run and the Data-Juicer operator, so the three
read records and report results the same way.

Records carry `caption1`, `caption2`, `image_path1`, `image_path2` (optional `objects1`/`objects2`,
`id`); anything else passes through. Relative image paths resolve against a base folder chosen by
the caller (the JSONL file's folder for runs; `image_root` for the operator).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .pipeline import DifferenceAreaGenerator, PairError, PairFailure, PairInput, PairResult
from .runfile import line_digest

RESULT_KEY = "imgdiff"


class RecordError(PairError):
    """A record is malformed (missing or mistyped field): `key` names the record, `message` says
    what is wrong, str() gives both."""


def record_key(record: Mapping[str, Any], fallback: str) -> str:
    return str(record.get("id", fallback))


def pair_from_record(record: Mapping[str, Any], key: str, base: Path) -> PairInput:
    """The engine input of one record; raises RecordError naming `key` and the problem."""
    missing = [k for k in ("image_path1", "image_path2") if not record.get(k)]
    if missing:
        raise RecordError(key, f"missing {', '.join(missing)}")
    paths = []
    for k in ("image_path1", "image_path2"):
        if not isinstance(record[k], str):
            raise RecordError(key, f"{k} must be a string, got {type(record[k]).__name__}")
        p = Path(record[k]).expanduser()
        paths.append(p if p.is_absolute() else base / p)
    # captions and object lists are checked by the engine (stages/objects.py), the one place for both
    objects = [tuple(v) if isinstance(v, list) else v for v in (record.get("objects1"), record.get("objects2"))]
    return PairInput(paths[0], paths[1], record.get("caption1"), record.get("caption2"), objects[0], objects[1], key=key)


@dataclass
class InputLine:
    number: int  # 1-based input line number
    record: dict | None
    pair: PairInput | None
    error: str | None  # what is wrong with the line (the results file's `error`), without the key
    digest: str = ""  # of the input line's text: lets --resume check the processed prefix line by line

    @property
    def key(self) -> str:
        """The record's `id`, or "line N" (how log lines name the record)."""
        return record_key(self.record, f"line {self.number}") if self.record is not None else f"line {self.number}"


def parse_line(number: int, text: str, base: Path) -> InputLine:
    line = _parse(number, text, base)
    line.digest = line_digest(text)
    return line


def _parse(number: int, text: str, base: Path) -> InputLine:
    if not text.strip():
        return InputLine(number, None, None, "empty line (expected a JSON object)")
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        return InputLine(number, None, None, f"invalid JSON ({exc.msg} at column {exc.colno})")
    if not isinstance(record, dict):
        return InputLine(number, None, None, f"expected a JSON object, got {type(record).__name__}")
    try:
        return InputLine(number, record, pair_from_record(record, record_key(record, f"line {number}"), base), None)
    except RecordError as exc:
        return InputLine(number, record, None, exc.message)


def result_fields(line: InputLine, outcome: PairResult | PairFailure | None, timings: bool) -> dict[str, Any]:
    fields: dict[str, Any] = {"line": line.number, "input_digest": line.digest}
    if line.pair is not None:
        fields["image_path1_resolved"] = str(line.pair.image1)
        fields["image_path2_resolved"] = str(line.pair.image2)
    if outcome is None or isinstance(outcome, PairFailure):
        fields.update(status="error", error=line.error if outcome is None else outcome.error, boxes=[])
        return fields
    fields.update(outcome.to_dict(timings=timings))
    return fields


def output_line(line: InputLine, outcome: PairResult | PairFailure | None, timings: bool) -> str:
    record = dict(line.record) if line.record is not None else {}
    record[RESULT_KEY] = result_fields(line, outcome, timings)
    return json.dumps(record, ensure_ascii=False)


@dataclass(frozen=True)
class OutputLine:
    text: str  # the JSON line, without newline
    error: str | None  # "KEY: what is wrong" for the log; None when the record was processed


def error_output(line: InputLine, message: str) -> OutputLine:
    """A record that could not be processed for a reason outside the record (e.g. its worker died)."""
    failed = InputLine(line.number, line.record, line.pair, message, line.digest)
    return OutputLine(output_line(failed, None, False), f"{line.key}: {message}")


def process_pairs(engine: DifferenceAreaGenerator, pairs: list[PairInput | None]) -> list[PairResult | PairFailure | None]:
    """One outcome per entry (None stays None), crop scoring batched across all the pairs."""
    given = [p for p in pairs if p is not None]
    outcomes = iter(engine.process_many(given, pairs_per_batch=max(1, len(given))) if given else [])
    return [None if p is None else next(outcomes) for p in pairs]


def process_lines(engine: DifferenceAreaGenerator, lines: list[InputLine], timings: bool) -> list[OutputLine]:
    """Output lines for `lines`, in order; crop scoring is batched across all of them."""
    out = []
    for ln, outcome in zip(lines, process_pairs(engine, [ln.pair for ln in lines])):
        error = f"{ln.key}: {ln.error}" if outcome is None else (f"{outcome.key}: {outcome.error}" if isinstance(outcome, PairFailure) else None)
        out.append(OutputLine(output_line(ln, outcome, timings), error))
    return out
