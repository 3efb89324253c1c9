"""Shard runs: shards in, one results file per shard out, committed whole, resumable shard by shard.

`--input` names shards (imgdiff_onnx.runs.shards), `--output` a folder. Each shard's results go
to `OUT/<shard name>.jsonl` (or `.parquet`), rows in the shard's order, each row its record's
non-image fields plus `imgdiff` (what a JSON Lines run's line holds, with `source`: the shard and
row or key). While a shard is in flight its results are appended batch by batch, fsync'ed, to a
hidden `.NAME.jsonl.partial`; when the shard ends it is renamed (or converted to Parquet, written
under a temporary name and renamed) to its results name: a results file that exists is complete.

The folder holds the run's record (`.imgdiff-run.json`: what a resume must match, and each
shard's size and modification time when the run started) and the shard errors
(`.imgdiff-shard-errors.jsonl`). `--resume` skips every shard whose results exist, continues the
shard in flight after its last written batch (its rows read again and checked against what was
written), and refuses a shard that changed since, by name. A shard that stops being readable is
one error line; what was read of it before is committed, and the run goes on with the next.
With kept scores (`--keep-scores`), each shard's are beside its results (`NAME.jsonl.scores/`,
imgdiff_onnx.runs.scores), written before the rows they belong to, so `retune` and `sweep` take
the folder as they take a results file.

The output folder follows a JSON Lines run's rules: written only when it is new or empty, or
holds a run of this tool (then with --resume or --overwrite); --overwrite removes only the files
the old record names, when the new run has loaded its models; one run at a time (a lock).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from ..engine.captions import ensure_available
from ..errors import ParameterError, RunError
from .columns import ColumnMap
from .jsonl import RunOptions, check_writable_folder, run_identity, written_positions
from .loop import AppendSink, LineTally, run_batches
from .outfolder import refuse_foreign
from .progress import ProgressBar
from .records import InputLine
from .runfile import OutputInUse, OutputLock, RunIdentity, explain_difference, fsync_folder
from .scores import ScoreWriter, drop_scores, kept_scores_meta
from .parquet_sink import parquet_schema
from .shard_results import ERRORS, FORMAT, RECORD, read_run_record
from .shards import Shard, ShardError, list_shards, read_shard
from .signals import GracefulStop, Interrupted

if TYPE_CHECKING:
    from ..engine.pipeline import DifferenceAreaGenerator

log = logging.getLogger(__name__)

LOCK = ".imgdiff-lock"
OUTPUT_FORMATS = ("jsonl", "parquet")


@dataclass(frozen=True)
class ShardOptions:
    """How shard records are read and their results written."""

    columns: ColumnMap = ColumnMap()
    image_root: Path | None = None  # relative image paths in Parquet resolve here (default: the Parquet file's folder)
    output_format: str = "jsonl"

    def __post_init__(self) -> None:
        if self.output_format not in OUTPUT_FORMATS:
            raise ParameterError(f"--output-format must be one of {', '.join(OUTPUT_FORMATS)}, got {self.output_format!r}", "output_format")

    def suffix(self) -> str:
        return "." + self.output_format


def _partial_of(results: Path) -> Path:
    """Where the results of a shard in flight are appended: `.NAME.jsonl.partial` beside its results."""
    jsonl = results.with_suffix(".jsonl")
    return jsonl.with_name(f".{jsonl.name}.partial")


def _write_record(output: Path, record: dict) -> None:
    path = output / RECORD
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=1)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_folder(output)


def check_shard_output(shards: list[Shard], output: Path, options: RunOptions) -> dict | None:
    """The output folder may be written as the options say; returns the record of the run that
    wrote it (None for a new or empty folder). Nothing is written here."""
    if options.limit is not None:
        raise RunError("--limit is for a JSON Lines input; with shards, name fewer shards (a glob or a brace range)")
    for shard in shards:
        if output.exists() and Path(os.path.realpath(shard.path)).is_relative_to(os.path.realpath(output)):
            raise RunError(f"--output {output} holds the input shard {shard.path}; write the results to another folder")
    if output.exists() and not output.is_dir():
        raise RunError(f"--output {output} is a file; with shard inputs the results go into a folder, one file per shard")
    if not output.exists():
        if output.suffix.lower() in (".jsonl", ".json", ".parquet", ".tar"):
            raise RunError(f"--input names shards, so --output is a folder (one results file per shard); {output} looks like a file "
                           "name: give a folder")  # fmt: skip
        check_writable_folder(output)
        return None
    record = read_run_record(output)
    if record is None:
        refuse_foreign("--output", output, [p.name for p in output.iterdir() if p.name != LOCK and not p.name.startswith(f".{LOCK}")])
        return None
    if not (options.resume or options.overwrite):
        raise RunError(f"{output} holds the results of a run; pass --resume to continue it or --overwrite to start again")
    return record


def _settings(identity: RunIdentity, shard_options: ShardOptions) -> dict:
    return asdict(identity) | {
        "columns": shard_options.columns.text(),
        "image_root": None if shard_options.image_root is None else str(shard_options.image_root.resolve()),
        "output_format": shard_options.output_format,
    }


def _setting_differences(old: dict, new: dict) -> list[str]:
    """Each setting of `new` that differs from the recorded `old`, with its values then and now."""
    fields = RunIdentity.__dataclass_fields__
    try:
        differ = RunIdentity(**{k: v for k, v in new.items() if k in fields}).explain(RunIdentity(**{k: v for k, v in old.items() if k in fields}))
    except TypeError:
        return ["run record (not readable by this version)"]
    return differ + [item for k in new if k not in fields and old.get(k) != new[k] for item in explain_difference(k, old.get(k), new[k])]


class ShardFolder:
    """The output folder of a shard run, locked for its lifetime: which shards are done, where
    each one's results go, and the commit of a finished shard."""

    def __init__(self, shards: list[Shard], output: Path, options: RunOptions, shard_options: ShardOptions, settings: dict,
                 entries: dict[str, dict] | None = None):  # fmt: skip
        """`entries`: each shard's record entry (its identity and results name), when not the
        `shards`' own now (a retune writes the entries of the run it retunes)."""
        self.output = output
        self.shard_options = shard_options
        old = check_shard_output(shards, output, options)
        try:
            output.mkdir(parents=True, exist_ok=True)
            self._lock = OutputLock(output / LOCK).acquire()
        except OutputInUse as exc:
            raise RunError(str(exc)) from None
        except OSError as exc:
            raise RunError(f"--output {output}: cannot write there ({exc.strerror or exc})") from None
        try:
            old = check_shard_output(shards, output, options)  # again, now that no other run can change it
            self.record = self._start(shards, old, options, settings, entries)
        except BaseException:
            self._lock.release()
            raise

    def _start(self, shards: list[Shard], old: dict | None, options: RunOptions, settings: dict, entries: dict[str, dict] | None) -> dict:
        names = {s.results_name(self.shard_options.suffix()) for s in shards}
        if len(names) < len(shards):
            raise RunError("two input shards would write the same results file (e.g. a.parquet and a.tar); give shards of one name each")
        current = entries if entries is not None else {s.name: s.identity() | {"results": s.results_name(self.shard_options.suffix())} for s in shards}
        if old is not None and options.resume:
            differ = _setting_differences(old.get("settings", {}), settings)
            if differ:
                raise RunError(f"{self.output} was written by a run with other settings: {'; '.join(differ)}; resume with the same "
                               "settings, or start again with --overwrite")  # fmt: skip
            recorded = old.get("shards", {})
            for shard in shards:
                was = recorded.get(shard.name)
                results = self.output / current[shard.name]["results"]
                started = results.exists() or _partial_of(results).exists()
                if was is not None and started and {k: was.get(k) for k in ("size", "mtime_ns")} != shard.identity():
                    raise RunError(f"shard {shard.name} changed since the run started (size or modification time); its results "
                                   f"would not be its own: remove {current[shard.name]['results']} from {self.output} to redo it, "
                                   "or start again with --overwrite")  # fmt: skip
            record = dict(old) | {"shards": recorded | current}
        else:
            if old is not None:  # --overwrite: only what the old run wrote goes
                self._remove_old(old)
            record = {"format": FORMAT, "settings": settings, "shards": current}
        _write_record(self.output, record)
        return record

    def _remove_old(self, old: dict) -> None:
        for name, entry in old.get("shards", {}).items():
            written = str(entry.get("results", "")) if isinstance(entry, dict) else ""
            if not written:
                continue
            results = self.output / written
            if not results.resolve().is_relative_to(self.output.resolve()):
                continue
            for path in (results, _partial_of(results)):
                if path.is_file():
                    path.unlink()
            drop_scores(results)
        errors = self.output / ERRORS
        if errors.is_file():
            errors.unlink()

    def discard(self) -> None:
        """Remove what this run wrote into the folder (its results, partial results, kept scores,
        shard errors and record): for a command that leaves nothing when it does not finish."""
        self._remove_old(self.record)
        (self.output / RECORD).unlink(missing_ok=True)

    def results(self, name: str) -> Path:
        """Where the results of the shard `name` go (its run record's entry names the file)."""
        return self.output / self.record["shards"][name]["results"]

    def partial(self, name: str) -> Path:
        return _partial_of(self.results(name))

    def done_rows(self, name: str) -> list[tuple[int, str]]:
        """(row, digest) of the rows of shard `name` already in its partial results (a torn last line cut)."""
        partial = self.partial(name)
        return list(written_positions(partial)) if partial.exists() else []

    def open_partial(self, name: str) -> BinaryIO:
        partial = self.partial(name)
        partial.parent.mkdir(parents=True, exist_ok=True)
        return open(partial, "ab")

    def commit(self, name: str, schema=None) -> None:
        """The shard's results, complete, under their name (the partial file renamed or converted;
        `schema`: the pass-through columns' Arrow types, for Parquet results)."""
        partial, results = self.partial(name), self.results(name)
        if not partial.exists():
            partial.parent.mkdir(parents=True, exist_ok=True)
            partial.touch()
        if results.suffix == ".parquet":
            from .parquet_sink import write_results_parquet

            tmp = results.with_name(f".{results.name}.tmp")
            write_results_parquet(partial, tmp, schema)
            os.replace(tmp, results)
            partial.unlink()
        else:
            os.replace(partial, results)
        fsync_folder(results.parent)

    def shard_error(self, name: str, message: str) -> None:
        with open(self.output / ERRORS, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"shard": name, "error": message}, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def close(self) -> None:
        self._lock.release()


def _batches(lines: Iterator[InputLine], size: int) -> Iterator[list[InputLine]]:
    """Lines in batches; where the shard stops being readable, the lines read before it are
    yielded before the ShardError goes on."""
    batch: list[InputLine] = []
    try:
        for line in lines:
            batch.append(line)
            if len(batch) >= size:
                yield batch
                batch = []
    except ShardError:
        if batch:
            yield batch
        raise
    if batch:
        yield batch


def _unread(shard: Shard, lines: Iterator[InputLine], done: list[tuple[int, str]], partial: Path) -> Iterator[InputLine]:
    """The shard's rows after those already written, each written one checked against its row."""
    for line in lines:
        if line.number <= len(done):
            if done[line.number - 1][1] != line.digest:
                raise RunError(f"{partial}: row {line.number} of {shard.name} is not the row its result was computed from; "
                               "remove the file to redo the shard")  # fmt: skip
            continue
        yield line


def check_shard_start(input_spec: str, output: Path, options: RunOptions, shard_options: ShardOptions | None = None,
                      identity: RunIdentity | None = None) -> list[Shard]:  # fmt: skip
    """What must hold before models load: the shards exist, the output folder may be written as the
    options say (no other run holds it; a resume continues the run of the same settings, when
    `identity` is given), and the caption data can be read."""
    shards = list_shards(input_spec)
    old = check_shard_output(shards, output, options)
    if old is not None:
        try:
            OutputLock.probe(output / LOCK)
        except OutputInUse as exc:
            raise RunError(str(exc)) from None
        if identity is not None and shard_options is not None and options.resume:
            differ = _setting_differences(old.get("settings", {}), _settings(identity, shard_options))
            if differ:
                raise RunError(f"{output} was written by a run with other settings: {'; '.join(differ)}; resume with the same "
                               "settings, or start again with --overwrite")  # fmt: skip
    ensure_available()
    return shards


def run_shards(engine: DifferenceAreaGenerator, input_spec: str, output: Path, options: RunOptions,
               shard_options: ShardOptions) -> dict[str, int]:  # fmt: skip
    """Process every shard `input_spec` names into the folder `output`; returns counts of ok and
    error records written now, and of shards that could not be read to their end."""
    shards = list_shards(input_spec)
    s = engine.settings
    identity = run_identity(Path(input_spec), engine.models.manifest, str(engine.models.precision), engine.params, s.jpeg_roundtrip, options,
                            s.keep_scores)  # fmt: skip
    meta = kept_scores_meta(engine.models, engine.params, s.jpeg_roundtrip) if s.keep_scores else None
    folder = ShardFolder(shards, output, options, shard_options, _settings(identity, shard_options))
    tally = LineTally()
    shard_errors = 0
    committed = sum(folder.results(shard.name).exists() for shard in shards)
    if committed:
        log.info("%d of %d shards already have their results in %s", committed, len(shards), output)
    bar = ProgressBar(len(shards), options.progress, initial=committed, unit="shard")
    try:
        with GracefulStop() as stop:
            for shard in shards:
                if folder.results(shard.name).exists():
                    continue
                done = folder.done_rows(shard.name)
                if done:
                    log.info("%s: continuing after its %d rows written before", shard.name, len(done))
                bar.describe(shard.name)
                scores = None if meta is None else ScoreWriter(folder.results(shard.name), meta, len(done), not done)
                try:
                    with folder.open_partial(shard.name) as handle:
                        lines = _unread(shard, read_shard(shard, shard_options.columns, shard_options.image_root), done,
                                        folder.partial(shard.name))  # fmt: skip
                        run_batches(engine, _batches(lines, options.pairs_per_batch), AppendSink(handle, tally, scores), stop,
                                    lambda signum: Interrupted.run(signum, committed, len(shards), str(output), "shards are committed in", options.overwrite),
                                    options.timings)  # fmt: skip
                except ShardError as exc:
                    shard_errors += 1
                    message = f"shard {shard.name}: {exc}"
                    log.error("%s", message)
                    folder.shard_error(shard.name, str(exc))
                if scores is not None:
                    scores.write([], [], [])  # a shard with no pair still has its (empty) kept scores
                folder.commit(shard.name, parquet_schema(shard.path) if shard_options.output_format == "parquet" else None)
                committed += 1
                bar.update(1)
    finally:
        bar.close()
        folder.close()
    tally.log_band()
    return tally.stats | {"shard_errors": shard_errors, "shards": len(shards)}
