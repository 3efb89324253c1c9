"""Data-Juicer records <-> engine: parse one JSONL line into a PairInput, turn an outcome into fields.

Shared by the single-process JSONL run, the Ray run and the Data-Juicer operator, so the three
read records and report results the same way.

Records carry `caption1`, `caption2`, `image_path1`, `image_path2` (optional `objects1`/`objects2`,
`id`); anything else passes through. Relative image paths resolve against a base folder chosen by
the caller (the JSONL file's folder for runs; `image_root` for the operator).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ImgDiffError
from .jsonlines import LineError, RawLine, parse_record, strict_dumps
from ..pairs import PairError, PairFailure, PairInput, PairResult

if TYPE_CHECKING:  # records are read and written without the engine (and onnxruntime): `show`, `retune`
    from ..engine.pipeline import DifferenceAreaGenerator
    from ..pairs import ScoreSheet

log = logging.getLogger(__name__)

RESULT_KEY = "imgdiff"
MAX_PATH_BYTES = 4096  # Linux's PATH_MAX
MAX_KEY_CHARS = 200  # how much of a record's id names it in log lines


class RecordError(PairError):
    """A record is malformed (missing or mistyped field): `key` names the record, `message` says
    what is wrong, str() gives both."""


def record_key(record: Mapping[str, Any], fallback: str) -> str:
    key = str(record.get("id", fallback))
    return key if len(key) <= MAX_KEY_CHARS else key[:MAX_KEY_CHARS] + "..."


def _image_path(key: str, name: str, value: object, base: Path) -> Path:
    if not isinstance(value, str):
        raise RecordError(key, f"{name} must be a string, got {type(value).__name__}")
    if "\x00" in value:
        raise RecordError(key, f"{name} holds a NUL character, which no file name can")
    size = len(value.encode("utf-8"))
    if size > MAX_PATH_BYTES:
        raise RecordError(key, f"{name} is {size:,} bytes long (limit {MAX_PATH_BYTES:,})")
    try:
        p = Path(value).expanduser()
    except RuntimeError:  # "~someone/..." of an unknown user
        raise RecordError(key, f"{name} starts with the home folder of an unknown user ({value.split('/')[0][:100]})") from None
    p = p if p.is_absolute() else base / p
    if len(os.fsencode(p)) > MAX_PATH_BYTES:
        raise RecordError(key, f"{name} resolves to a path of {len(os.fsencode(p)):,} bytes (limit {MAX_PATH_BYTES:,})")
    return p


def pair_from_record(record: Mapping[str, Any], key: str, base: Path) -> PairInput:
    """The engine input of one record; raises RecordError naming `key` and the problem."""
    missing, problems, paths = [], [], []
    for name in ("image_path1", "image_path2"):  # both named when both are wrong
        value = record.get(name)
        if value is None or value == "":
            missing.append(name)
            continue
        try:
            paths.append(_image_path(key, name, value, base))
        except RecordError as exc:
            problems.append(exc.message)
    if missing or problems:
        raise RecordError(key, "; ".join(([f"missing {', '.join(missing)}"] if missing else []) + problems))
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
    source: dict | None = None  # where a shard's record came from: {"shard": name, "row": n} or {"shard": name, "key": k}

    @property
    def key(self) -> str:
        """The record's `id`, or where it is: "line N", or "SHARD row N" / "SHARD key K" (how log
        lines name the record)."""
        fallback = source_text(self.source) if self.source is not None else f"line {self.number}"
        return record_key(self.record, fallback) if self.record is not None else fallback


def source_text(source: Mapping[str, Any]) -> str:
    """"SHARD row N" or "SHARD key K"."""
    return f"{source['shard']} key {source['key']}" if "key" in source else f"{source['shard']} row {source['row']}"


def shard_line(number: int, record: dict[str, Any], values: Mapping[str, Any], source: dict, digest: str,
               problem: str | None = None) -> InputLine:  # fmt: skip
    """A shard's record: `record` passes through to its results line, `values` holds its fields by
    Data-Juicer name (images as ImageBytes or paths); `problem` says what makes it unreadable.
    Captions and object lists are checked by the engine, as for JSON Lines records."""
    given = values.get("id")
    key = record_key({"id": given}, "") if given is not None else source_text(source)
    if problem is not None:
        return InputLine(number, record, None, problem, digest, source)
    objects = [tuple(v) if isinstance(v, list) else v for v in (values.get("objects1"), values.get("objects2"))]
    pair = PairInput(values["image_path1"], values["image_path2"], values.get("caption1"), values.get("caption2"),
                     objects[0], objects[1], key=key)  # fmt: skip
    return InputLine(number, record, pair, None, digest, source)


def parse_line(raw: RawLine, base: Path) -> InputLine:
    """One input line as a record and its engine input, or what is wrong with it; never raises
    for what the line holds."""
    try:
        record = parse_record(raw)
    except LineError as exc:
        return InputLine(raw.number, None, None, str(exc), raw.digest)
    try:
        return InputLine(raw.number, record, pair_from_record(record, record_key(record, f"line {raw.number}"), base), None, raw.digest)
    except RecordError as exc:
        return InputLine(raw.number, record, None, exc.message, raw.digest)


def result_fields(line: InputLine, outcome: PairResult | PairFailure | None, timings: bool) -> dict[str, Any]:
    fields: dict[str, Any] = {"line": line.number, "input_digest": line.digest}
    if line.source is not None:
        fields["source"] = line.source
    if line.pair is not None:
        for name, image in (("image_path1_resolved", line.pair.image1), ("image_path2_resolved", line.pair.image2)):
            if isinstance(image, (str, Path)):  # not for image bytes from a shard
                fields[name] = str(image)
    if outcome is None or isinstance(outcome, PairFailure):
        fields.update(status="error", error=line.error if outcome is None else outcome.error, boxes=[])
        return fields
    fields.update(outcome.to_dict(timings=timings))
    return fields


def output_line(line: InputLine, outcome: PairResult | PairFailure | None, timings: bool) -> str:
    """The results line: strict JSON, whatever the outcome holds (a non-finite score from the
    engine makes the record an error rather than a line other tools cannot read)."""
    record = dict(line.record) if line.record is not None else {}
    record[RESULT_KEY] = result_fields(line, outcome, timings)
    try:
        return strict_dumps(record)
    except ValueError:
        problem = "the engine computed a score that is not a finite number (NaN or infinity) for this record"
        record[RESULT_KEY] = result_fields(line, PairFailure(line.key, problem), timings)
        return strict_dumps(record)


@dataclass(frozen=True)
class OutputLine:
    text: str  # the JSON line, without newline
    error: str | None  # "KEY: what is wrong" for the log; None when the record was processed
    band: dict[str, dict[str, int]] | None = None  # the pair's guard-band tally (PairResult.band), for the run summary
    scores: ScoreSheet | None = None  # the pair's kept scores (PairResult.scores), written beside the results
    number: int = 0  # the input line
    digest: str = ""  # the input line's digest


def error_output(line: InputLine, message: str) -> OutputLine:
    """A record that could not be processed for a reason outside the record (e.g. its worker died)."""
    failed = InputLine(line.number, line.record, line.pair, message, line.digest, line.source)
    return OutputLine(output_line(failed, None, False), f"{line.key}: {message}")


def process_pairs(engine: DifferenceAreaGenerator, pairs: list[PairInput | None]) -> list[PairResult | PairFailure | None]:
    """One outcome per entry (None stays None), crop scoring batched across all the pairs."""
    given = [p for p in pairs if p is not None]
    outcomes = iter(engine.process_many(given, pairs_per_batch=max(1, len(given))) if given else [])
    return [None if p is None else next(outcomes) for p in pairs]


def process_pairs_isolating(engine: DifferenceAreaGenerator, pairs: list[PairInput | None]) -> list[PairResult | PairFailure | None]:
    """process_pairs, and when it fails unexpectedly (a bug, or memory running out on one record)
    each pair again alone, so that only the record it fails on becomes an error and the rest go
    on. Deliberate errors (ImgDiffError) are not caught here: they stop the run. Every way records
    are processed goes through it: a JSON Lines or shard run, Ray's actors, the Data-Juicer operator."""
    try:
        return process_pairs(engine, pairs)
    except ImgDiffError:
        raise
    except Exception as exc:  # noqa: BLE001 - one record's unforeseen failure must not end a week-long run
        if len(pairs) == 1:
            key = pairs[0].key if pairs[0] is not None else ""
            log.error("unexpected failure on %s", key, exc_info=True)
            detail = str(exc) if len(str(exc)) <= 300 else str(exc)[:300] + "..."
            return [PairFailure(key, f"unexpected failure ({type(exc).__name__}: {detail}); please report it with the record")]
        log.warning("unexpected failure in a batch (%s: %s); processing its %d records one by one", type(exc).__name__, exc, len(pairs))
    return [outcome for pair in pairs for outcome in process_pairs_isolating(engine, [pair])]


def process_lines(engine: DifferenceAreaGenerator, lines: list[InputLine], timings: bool) -> list[OutputLine]:
    """Output lines for `lines`, in order; crop scoring is batched across all of them."""
    out = []
    for ln, outcome in zip(lines, process_pairs_isolating(engine, [ln.pair for ln in lines])):
        error = f"{ln.key}: {ln.error}" if outcome is None else (f"{outcome.key}: {outcome.error}" if isinstance(outcome, PairFailure) else None)
        band, scores = (outcome.band, outcome.scores) if isinstance(outcome, PairResult) else (None, None)
        out.append(OutputLine(output_line(ln, outcome, timings), error, band, scores, ln.number, ln.digest))
    return out
