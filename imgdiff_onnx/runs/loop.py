"""The one run loop of every format: batches of records in, result lines appended to a sink.

A JSON Lines run (runs/jsonl.py) and a shard run (runs/shard_run.py) differ only in where the
records come from and where their results go; both go through `run_batches`, and both append a
batch the same way (`append_results`: its kept scores first, then its lines, fsync'ed, counted).
The Ray run shares the sink and spreads the batches over actors (runs/ray_run.py).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, BinaryIO, Protocol

from ..engine.band import BandTally
from .records import InputLine, OutputLine, process_lines
from .signals import GracefulStop, Interrupted

if TYPE_CHECKING:
    from ..engine.pipeline import DifferenceAreaGenerator
    from .scores import ScoreWriter

log = logging.getLogger(__name__)


class LineTally:
    """Counts of the result lines written (ok, error) and their guard-band tally; logs each error."""

    def __init__(self) -> None:
        self.stats = {"ok": 0, "error": 0}
        self.band = BandTally.empty()  # the guard band's scores and re-scores of the lines written now

    def add(self, lines: list[OutputLine]) -> None:
        for line in lines:
            if line.band:
                self.band.merge(line.band)
            if line.error is None:
                self.stats["ok"] += 1
            else:
                self.stats["error"] += 1
                log.warning("%s", line.error)

    def log_band(self) -> None:
        if self.band.scored:
            log.info("guard band: scores within the margin of a threshold, re-scored in fp32: %s", self.band.describe())


def append_results(handle: BinaryIO, lines: list[OutputLine], tally: LineTally, scores: ScoreWriter | None = None) -> None:
    """Append a batch of result lines and make it durable (a crash loses at most the batch in
    flight). Kept scores are written first, so every result line of a file has its scores."""
    if scores is not None:
        kept = [line for line in lines if line.scores is not None]
        scores.write([ln.number for ln in kept], [ln.digest for ln in kept], [ln.scores for ln in kept])  # type: ignore[misc]
    tally.add(lines)
    handle.write("".join(line.text + "\n" for line in lines).encode("utf-8"))
    handle.flush()
    os.fsync(handle.fileno())


class ResultSink(Protocol):
    def write(self, lines: list[OutputLine]) -> None: ...


def run_batches(engine: DifferenceAreaGenerator, batches: Iterable[list[InputLine]], sink: ResultSink, stop: GracefulStop,
                interrupted: Callable[[int], Interrupted], timings: bool) -> None:  # fmt: skip
    """Process each batch into `sink`, in order; after a batch is written, a stop signal raises
    `interrupted(signum)` (what is written stays, whole)."""
    for batch in batches:
        sink.write(process_lines(engine, batch, timings))
        if stop.signum is not None:
            raise interrupted(stop.signum)


class AppendSink:
    """A sink appending to an open results file (with the batch's kept scores, when kept)."""

    def __init__(self, handle: BinaryIO, tally: LineTally, scores: ScoreWriter | None = None):
        self.handle, self.tally, self.scores = handle, tally, scores

    def write(self, lines: list[OutputLine]) -> None:
        append_results(self.handle, lines, self.tally, self.scores)
