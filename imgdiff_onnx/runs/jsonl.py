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
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..engine.captions import ensure_available
from ..errors import ParameterError, RunError
from .jsonlines import MAX_LINE_BYTES, count_lines, read_lines
from ..engine.manifest import Manifest
from ..params import OperatorParams
from .progress import ProgressBar
from .loop import LineTally, append_results, run_batches
from .records import RESULT_KEY, InputLine, OutputLine, parse_line
from .runfile import OutputInUse, OutputLock, RunIdentity, check_not_input, models_digest, params_text, sidecar
from ..settings import PAIRS_PER_BATCH, EngineSettings
from .signals import GracefulStop, Interrupted
from .scores import ScoreWriter, drop_scores, kept_scores_meta

if TYPE_CHECKING:  # a run needs the engine; checking an output (retune, on a host without onnxruntime) does not
    from ..engine.pipeline import DifferenceAreaGenerator

log = logging.getLogger(__name__)

__all__ = ["RESULT_KEY", "ResultWriter", "RunError", "RunOptions", "input_batches", "run"]


@dataclass(frozen=True)
class RunOptions:
    limit: int | None = None  # process at most this many input lines (counting resumed ones)
    resume: bool = False
    overwrite: bool = False
    pairs_per_batch: int = PAIRS_PER_BATCH
    timings: bool = False  # include per-stage seconds in the output (makes output non-deterministic)
    progress: bool = True

    def __post_init__(self) -> None:
        if self.resume and self.overwrite:
            raise ParameterError("--resume and --overwrite exclude each other: continue the file, or start it again", "resume")
        if self.limit is not None and self.limit < 1:
            raise ParameterError(f"--limit must be 1 or more, got {self.limit}", "limit")
        if self.pairs_per_batch < 1:
            raise ParameterError(f"--pairs-per-batch must be 1 or more, got {self.pairs_per_batch}", "pairs_per_batch")


def cut_torn_tail(output: Path) -> None:
    """Cut a last line that has no line break (a crash mid-write), reading only the file's end."""
    with open(output, "r+b") as handle:
        size = handle.seek(0, os.SEEK_END)
        end = size
        while end > 0:
            start = max(0, end - (1 << 16))
            handle.seek(start)
            block = handle.read(end - start)
            if start + len(block) == size and block.endswith(b"\n"):
                return  # complete
            newline = block.rfind(b"\n")
            if newline >= 0:
                cut = start + newline + 1
                break
            end = start
        else:
            cut = 0
        log.warning("%s: dropping a torn last line (%d bytes) before resuming", output, size - cut)
        handle.truncate(cut)


_POSITION = re.compile(rb'"' + RESULT_KEY.encode() + rb'": \{"line": (\d+), "input_digest": "([0-9a-f]{16})"')


def result_position(raw: bytes) -> tuple[object, object]:
    """(line, input_digest) of a results line: read from the bytes where the line holds exactly one
    result key (strings escape their quotes, so it cannot come from a string), else parsed."""
    found = _POSITION.findall(raw)
    if len(found) == 1:
        return int(found[0][0]), found[0][1].decode("ascii")
    fields = json.loads(raw)[RESULT_KEY]
    return fields["line"], fields.get("input_digest")


def written_positions(output: Path) -> Iterator[tuple[int, str]]:
    """(input line, input digest) of each complete results line of `output`, in order, after a
    torn last line (a crash mid-write) is cut off; RunError for a line that is not a result line
    or not the next one of a single run."""
    cut_torn_tail(output)
    with open(output, "rb") as handle:
        for i, raw in enumerate(handle, start=1):
            try:
                number, digest = result_position(raw)
            except (ValueError, KeyError, TypeError):
                raise RunError(f"{output}: line {i} is not a result line of this tool; refusing to resume into it") from None
            if number != i:
                raise RunError(f"{output}: line {i} holds the result of input line {number}; not a prefix of one run")
            yield number, str(digest)


def _completed_lines(output: Path, input_path: Path) -> int:
    """Complete lines already in `output`, each checked against its input line (number and
    digest), both files streamed."""
    if not output.exists():
        return 0
    inputs = read_lines(input_path)
    done = 0
    for i, digest in written_positions(output):
        expected = next(inputs, None)
        if expected is None or digest != expected.digest:
            raise RunError(f"{output}: line {i} is the result of another input line {i} than {input_path}'s (the input changed?); "
                           "resume only with the input that started the file")  # fmt: skip
        done = i
    return done


def input_batches(path: Path, skip: int, limit: int | None, batch_size: int) -> Iterator[list[InputLine]]:
    """Parsed input lines after the first `skip`, in batches; relative paths resolve against the file's folder."""
    base = path.resolve().parent
    batch: list[InputLine] = []
    for raw in read_lines(path, skip, limit):
        batch.append(parse_line(raw, base))
        if len(batch) >= batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def is_results_file(path: Path) -> bool:
    """Was `path` written by a run of this tool: its run record is beside it, or its first line is
    a result line (for files whose run record was lost)."""
    if RunIdentity.read(path) is not None:
        return True
    with open(path, "rb") as handle:
        first = handle.readline(MAX_LINE_BYTES)
    try:
        number, digest = result_position(first)
    except (ValueError, KeyError, TypeError):
        return False
    return number == 1 and isinstance(digest, str)


class ResultWriter:
    """Appends result lines in input order, fsync'ed per batch, with counts and a progress bar.

    Opening locks the output (every name of the file meets the lock), checks it against the
    options (refuse / resume / overwrite) and tells how many input lines are already done (`done`)
    and how many there are to do in all (`total`). An overwritten file is emptied, and a new run
    record written, only when the first batch of new results is written: a run that fails before
    that leaves the old file as it was.
    """

    def __init__(self, input_path: Path, output_path: Path, options: RunOptions, identity: RunIdentity | None = None,
                 scores_meta: dict | None = None):  # fmt: skip
        self._scores_meta = scores_meta  # keeping scores: the record of the run written beside them
        check_output(input_path, output_path, options)
        try:
            output_path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunError(f"--output {output_path}: cannot create its folder ({exc.strerror or exc})") from None
        try:
            self._lock = OutputLock(output_path).acquire()  # before anything reads or changes the file
        except OutputInUse as exc:
            raise RunError(str(exc)) from None
        except OSError as exc:
            raise RunError(f"--output {output_path}: cannot open it for writing ({exc.strerror or exc})") from None
        try:
            self._open(input_path, output_path, options, identity)
        except BaseException:
            self._lock.release()
            raise

    def _open(self, input_path: Path, output_path: Path, options: RunOptions, identity: RunIdentity | None) -> None:
        real = self._lock.real  # the file itself, whichever name it was given by
        check_output(input_path, output_path, options)  # again, now that no other run can change it
        started = real.stat().st_size > 0
        if started and options.resume and identity is not None:
            check_same_run(output_path, identity)
        self.done = _completed_lines(real, input_path) if options.resume and started else 0
        total = count_lines(input_path)
        self.total = total if options.limit is None else min(total, options.limit)
        if self.done > self.total:
            raise RunError(f"{output_path} has {self.done} results but the input has only {self.total} lines to process")
        if self.done:
            log.info("resuming after %d completed lines", self.done)
        self._replace = started and options.overwrite
        self._overwrite = options.overwrite
        self._identity = identity if self.done == 0 else None
        self._real = real
        self.tally = LineTally()
        self._scores = None if self._scores_meta is None else ScoreWriter(real, self._scores_meta, self.done, self.done == 0)
        self._bar = ProgressBar(self.total, options.progress, initial=self.done)
        self._out = open(real, "ab")

    def _begin(self) -> None:
        """Before the first new results: empty a file being overwritten, record the run."""
        if self._replace:
            self._out.truncate(0)
            if self._scores is None:
                drop_scores(self._real)  # the replaced file's kept scores would not match the new results
            self._replace = False
        if self._identity is not None:
            self._identity.write(self._real)
            self._identity = None

    def write(self, lines: list[OutputLine]) -> None:
        if not lines:
            return
        self._begin()
        append_results(self._out, lines, self.tally, self._scores)
        self._bar.update(len(lines))

    @property
    def stats(self) -> dict[str, int]:
        """Counts of the ok and error lines written now."""
        return self.tally.stats

    @property
    def written(self) -> int:
        """Input lines whose results are in the file (resumed ones included)."""
        return self.done + self.stats["ok"] + self.stats["error"]

    def interrupted(self, signum: int) -> Interrupted:
        return Interrupted.run(signum, self.written, self.total, str(self._real), overwrite=self._overwrite)

    def close(self, finished: bool = True) -> None:
        """Close and unlock; a file this run created and left empty is removed unless the run
        `finished` (an empty input gives an empty results file)."""
        self._out.close()
        self._bar.close()
        self._lock.release(keep=finished)
        self.tally.log_band()

    def __enter__(self) -> "ResultWriter":
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.close(finished=exc_type is None)


def check_output(input_path: Path, output_path: Path, options: RunOptions, resumable: bool = True) -> None:
    """The output may be written as the options say: it is not the input (by any name), and an
    existing file is continued only with --resume (`resumable` commands) and replaced only with
    --overwrite when it is a results file of this tool. Nothing is opened for writing here. The
    one output rule of `run`, `--ray` and `retune`."""
    check_not_input(input_path, output_path)
    if output_path.is_dir():
        raise RunError(f"--output {output_path} is a folder; give the results file's name")
    check_writable_folder(output_path)
    try:
        started = output_path.exists() and output_path.stat().st_size > 0
    except OSError as exc:
        raise RunError(f"--output {output_path}: cannot look it up ({exc.strerror or exc})") from None
    if not started:
        return
    if not (options.resume or options.overwrite):
        hint = "pass --resume to continue it or --overwrite to start again" if resumable else "pass --overwrite to replace it"
        raise RunError(f"{output_path} exists; {hint}")
    if options.overwrite and not is_results_file(output_path):
        raise RunError(f"{output_path} is not a results file of this tool (no run record beside it, and its first line is not a "
                       "result line); --overwrite replaces only those: move it away, or choose another --output")  # fmt: skip


def check_same_run(output_path: Path, identity: RunIdentity) -> None:
    """A resume continues only the run that started the file: its record, and each setting that
    differs named with its values then and now."""
    real = Path(os.path.realpath(output_path))
    recorded = RunIdentity.read(real)
    if recorded is None:
        raise RunError(f"{output_path}: no record of the run that wrote it ({sidecar(real, 'run.json').name}), so a "
                       "resume cannot be checked; start again with --overwrite or write to another --output")  # fmt: skip
    differ = identity.explain(recorded)
    if differ:
        raise RunError(f"{output_path} was written by a run with other settings: {'; '.join(differ)}; resume with the same "
                       "settings, or start again with --overwrite")  # fmt: skip


def check_writable_folder(output_path: Path) -> None:
    """The output's folder exists and is writable, or can be created (its nearest existing parent
    is a writable folder)."""
    parent = output_path.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise RunError(f"--output {output_path}: {parent} is a file, so the results file cannot go there")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise RunError(f"--output {output_path}: {parent} is not writable (permission denied)")


def check_start(input_path: Path, output_path: Path, options: RunOptions, identity: RunIdentity | None = None) -> None:
    """What must hold before models load or any output is touched: the input is a readable file,
    the output may be written as the options say (no other run holds it; a resume continues the
    run of the same `identity`, when given), and the caption data can be read (not discovered at
    the first record that needs it)."""
    if input_path.is_dir():
        raise RunError(f"--input {input_path} is a folder; give the JSONL file of records")
    if not input_path.is_file():
        raise RunError(f"input file not found: {input_path}")
    if not os.access(input_path, os.R_OK):
        raise RunError(f"--input {input_path}: not readable (permission denied)")
    check_output(input_path, output_path, options)
    try:
        OutputLock.probe(output_path)
    except OutputInUse as exc:
        raise RunError(str(exc)) from None
    if identity is not None and options.resume and output_path.exists() and output_path.stat().st_size > 0:
        check_same_run(output_path, identity)
    ensure_available()  # the caption tables ship with the package: this finds a damaged install, in 0.1 s


def early_identity(models: Path, params: OperatorParams, settings: EngineSettings, input_path: Path, options: RunOptions) -> RunIdentity | None:
    """The run's identity from the model folder's manifest alone (no graph loads), so that a
    resume with other settings is refused in a second; None where the folder cannot say (the
    engine's load then gives its own error)."""
    from ..engine.manifest import read as read_manifest
    from ..engine.precision import resolve_precision
    from ..errors import ImgDiffError

    try:
        manifest = read_manifest(Path(models))
        precision, _ = resolve_precision(settings.precision, manifest, Path(models))
    except (ImgDiffError, OSError):
        return None
    return run_identity(input_path, manifest, str(precision), params, settings.jpeg_roundtrip, options, settings.keep_scores)


def run_identity(input_path: Path, manifest: Manifest, precision: str, params: OperatorParams, jpeg: bool, options: RunOptions,
                 keep_scores: bool = False) -> RunIdentity:  # fmt: skip
    """What must be the same for a resumed run to continue a results file."""
    from ..engine.precision import Precision

    band = manifest.guard_band
    banded = [m for m in Precision.parse(precision).banded() if m in ("clip", "blip")] if band is not None else []
    return RunIdentity(
        input=str(input_path.resolve()),
        models=models_digest(manifest),
        precision=precision,
        params=params_text(params.to_dicts()),
        jpeg_roundtrip=jpeg,
        timings=options.timings,
        keep_scores=keep_scores,
        guard_band=json.dumps(band.to_margins(), sort_keys=True) if band is not None and banded else "",
    )


def run(engine: DifferenceAreaGenerator, input_path: Path, output_path: Path, options: RunOptions) -> dict[str, int]:
    """Process `input_path` into `output_path`; returns counts of ok / error lines written now."""
    check_start(input_path, output_path, options)
    s = engine.settings
    identity = run_identity(input_path, engine.models.manifest, str(engine.models.precision), engine.params, s.jpeg_roundtrip, options, s.keep_scores)
    meta = kept_scores_meta(engine.models, engine.params, s.jpeg_roundtrip) if s.keep_scores else None
    with GracefulStop() as stop, ResultWriter(input_path, output_path, options, identity, meta) as writer:
        batches = input_batches(input_path, writer.done, options.limit, options.pairs_per_batch)
        run_batches(engine, batches, writer, stop, writer.interrupted, options.timings)
    return writer.stats
