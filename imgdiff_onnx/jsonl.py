"""Dataset runs: JSONL records in, one JSONL result line per input line out, resumable.

Input lines are Data-Juicer records (`caption1`, `caption2`, `image_path1`, `image_path2`;
optional `objects1`/`objects2`; anything else passes through). Relative image paths resolve
against the input file's folder. Each output line is the input record with one added key,
`imgdiff`, holding the status (`ok` / `error` + message), the boxes (centre xywh, image-1
pixels), objects, pair similarity, early-exit reason and per-stage counts.

Durability: results are appended batch by batch and fsync'ed, so a crash loses at most the
batch in flight; `resume` drops a torn last line, checks that the output is the prefix of this
input, and continues with the next input line.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .pipeline import DifferenceAreaGenerator, PairFailure, PairInput, PairResult

log = logging.getLogger(__name__)

RESULT_KEY = "imgdiff"


class RunError(RuntimeError):
    """The run cannot start or continue (not a per-record problem)."""


@dataclass(frozen=True)
class RunOptions:
    limit: int | None = None  # process at most this many input lines (counting resumed ones)
    resume: bool = False
    overwrite: bool = False
    pairs_per_batch: int = 4
    timings: bool = False  # include per-stage seconds in the output (makes output non-deterministic)
    progress: bool = True


@dataclass
class _Line:
    number: int  # 1-based input line number
    record: dict | None
    pair: PairInput | None
    error: str | None


def _parse(number: int, text: str, base: Path) -> _Line:
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        return _Line(number, None, None, f"line {number}: invalid JSON ({exc.msg} at column {exc.colno})")
    if not isinstance(record, dict):
        return _Line(number, None, None, f"line {number}: expected a JSON object, got {type(record).__name__}")
    key = str(record.get("id", f"line {number}"))
    missing = [k for k in ("image_path1", "image_path2") if not record.get(k)]
    if missing:
        return _Line(number, record, None, f"{key}: missing {', '.join(missing)}")
    paths = []
    for k in ("image_path1", "image_path2"):
        if not isinstance(record[k], str):
            return _Line(number, record, None, f"{key}: {k} must be a string")
        p = Path(record[k]).expanduser()
        paths.append(p if p.is_absolute() else base / p)
    objects = []
    for k in ("objects1", "objects2"):
        value = record.get(k)
        if value is not None and (not isinstance(value, list) or not all(isinstance(w, str) for w in value)):
            return _Line(number, record, None, f"{key}: {k} must be a list of strings")
        objects.append(tuple(value) if value is not None else None)
    pair = PairInput(paths[0], paths[1], record.get("caption1"), record.get("caption2"), objects[0], objects[1], key=key)
    return _Line(number, record, pair, None)


def _result_fields(line: _Line, outcome: PairResult | PairFailure | None, timings: bool) -> dict[str, Any]:
    fields: dict[str, Any] = {"line": line.number}
    if line.pair is not None:
        fields["image_path1_resolved"] = str(line.pair.image1)
        fields["image_path2_resolved"] = str(line.pair.image2)
    if outcome is None or isinstance(outcome, PairFailure):
        fields.update(status="error", error=line.error if outcome is None else outcome.error, boxes=[])
        return fields
    fields.update(
        status="ok",
        boxes=[[round(float(v), 4) for v in box] for box in np.asarray(outcome.boxes, dtype=np.float32)],
        objects1=outcome.objects1,
        objects2=outcome.objects2,
        pair_similarity=None if outcome.pair_similarity is None else round(outcome.pair_similarity, 6),
        exit_reason=outcome.exit_reason,
        counts=outcome.counts,
    )
    if timings:
        fields["times"] = {k: round(v, 4) for k, v in outcome.times.items()}
    return fields


def _output_line(line: _Line, outcome: PairResult | PairFailure | None, timings: bool) -> str:
    record = dict(line.record) if line.record is not None else {}
    record[RESULT_KEY] = _result_fields(line, outcome, timings)
    return json.dumps(record, ensure_ascii=False)


def _completed_lines(output: Path) -> int:
    """Complete lines already in `output`; a torn last line (crash mid-write) is cut off."""
    if not output.exists():
        return 0
    data = output.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        log.warning("%s: dropping a torn last line (%d bytes) before resuming", output, len(data) - cut)
        with open(output, "r+b") as handle:
            handle.truncate(cut)
        data = data[:cut]
    lines = data.splitlines()
    for i, raw in enumerate(lines, start=1):
        try:
            number = json.loads(raw)[RESULT_KEY]["line"]
        except (ValueError, KeyError, TypeError):
            raise RunError(f"{output}: line {i} is not a result line of this tool; refusing to resume into it") from None
        if number != i:
            raise RunError(f"{output}: line {i} holds the result of input line {number}; not a prefix of one run")
    return len(lines)


def count_lines(path: Path) -> int:
    with open(path, "rb") as handle:
        return sum(1 for _ in handle)


def _input_lines(path: Path, skip: int, limit: int | None) -> Iterator[_Line]:
    base = path.resolve().parent
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, text in enumerate(handle, start=1):
            if limit is not None and number > limit:
                return
            if number <= skip:
                continue
            yield _parse(number, text.strip(), base)


def run(engine: DifferenceAreaGenerator, input_path: Path, output_path: Path, options: RunOptions) -> dict[str, int]:
    """Process `input_path` into `output_path`; returns counts of ok / error lines written now."""
    if not input_path.is_file():
        raise RunError(f"input file not found: {input_path}")
    if output_path.exists() and output_path.stat().st_size > 0 and not (options.resume or options.overwrite):
        raise RunError(f"{output_path} exists; pass --resume to continue it or --overwrite to start again")
    if options.overwrite and output_path.exists():
        output_path.unlink()
    done = _completed_lines(output_path) if options.resume else 0
    total = count_lines(input_path)
    if options.limit is not None:
        total = min(total, options.limit)
    if done > total:
        raise RunError(f"{output_path} has {done} results but the input has only {total} lines to process")
    if done:
        log.info("resuming after %d completed lines", done)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    stats = {"ok": 0, "error": 0}
    bar = None
    if options.progress and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=total, initial=done, unit="pair", dynamic_ncols=True)
    with open(output_path, "a", encoding="utf-8") as out:
        batch: list[_Line] = []

        def flush() -> None:
            pairs = [ln.pair for ln in batch if ln.pair is not None]
            outcomes = iter(engine.process_many(pairs, pairs_per_batch=max(1, len(pairs))) if pairs else [])
            for ln in batch:
                outcome = next(outcomes) if ln.pair is not None else None
                status = "error" if outcome is None or isinstance(outcome, PairFailure) else "ok"
                stats[status] += 1
                if status == "error":
                    log.warning("%s", ln.error if outcome is None else f"{outcome.key}: {outcome.error}")
                out.write(_output_line(ln, outcome, options.timings) + "\n")
            out.flush()
            os.fsync(out.fileno())
            if bar is not None:
                bar.update(len(batch))
            batch.clear()

        for line in _input_lines(input_path, done, options.limit):
            batch.append(line)
            if len(batch) >= options.pairs_per_batch:
                flush()
        if batch:
            flush()
    if bar is not None:
        bar.close()
    return stats
