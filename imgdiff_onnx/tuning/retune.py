"""Retune: a kept-scores run's results at other thresholds, without running FastSAM, CLIP or BLIP.

What may change (RETUNABLE): the image-pair similarity interval [min_score_1, max_score_1], the
crop-pair similarity interval [min_score_2, max_score_2] and the ITM interval [min_score,
max_score], tightened or loosened, since a kept-scores run computed every score with the gates
open. Anything else (FastSAM's imgsz, conf, iou; the model names) chose what was scored, so a
change to it is refused, naming it.

Each result equals a fresh `run` with the new parameters on the same models, field for field but
the timings: the decisions are made by imgdiff_onnx.engine.decide. With a banded model (the
default), a score within the guard band of a new threshold decides by its fp32 value; the scores
the run did not re-score in fp32 are then computed in fp32 (imgdiff_onnx.tuning.rescore: only
those crops, from the images and the run's model folder).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from ..errors import ParameterError, RunError
from ..runs.jsonlines import LineError, count_lines, parse_record, read_lines, strict_dumps
from ..pairs import PairInput, PairResult, ScoreSheet
from ..params import OperatorParams
from ..runs.progress import ProgressBar
from ..runs.records import RESULT_KEY, InputLine, output_line
from ..runs.runfile import OutputInUse, OutputLock, RunIdentity, check_not_input, fsync_folder, params_text
from ..engine.decide import BandSpec, Decision, decide
from ..runs.signals import GracefulStop, Interrupted
from ..runs.scores import KeptScoresMeta, drop_scores, read_sheets, scores_folder

if TYPE_CHECKING:
    from .rescore import PairImages, Rescorer

log = logging.getLogger(__name__)

RETUNABLE = {
    "image_pair_similarity_filter_args": ("min_score_1", "max_score_1", "min_score_2", "max_score_2"),
    "image_text_matching_filter_args": ("min_score", "max_score"),
}
BLOCK = 512  # result lines decided together (their fp32 re-scores, if any, load the models once)
ROUNDS = 4  # gates in a chain (S1, S6, S5 crop 1, S5 crop 2): each fp32 round settles at least the next one


def check_retunable(kept: OperatorParams, new: OperatorParams) -> None:
    """Refuse, naming it, a parameter the kept scores cannot answer for."""
    mine, theirs = kept.to_dicts(), new.to_dicts()
    for group, values in theirs.items():
        for name, value in values.items():
            if name in RETUNABLE.get(group, ()) or value == mine[group][name]:
                continue
            why = ("FastSAM's settings chose the candidate boxes that were scored" if group == "image_segment_mapper_args"
                   else "it names the model that computed the scores")  # fmt: skip
            raise ParameterError(f"{group}.{name}: {value!r} asked, the kept scores are for {mine[group][name]!r}; {why}, so only a new "
                                 f"`run` can change it (retune changes {retunable_text()})", name)  # fmt: skip


def retunable_text() -> str:
    return ", ".join(f"{g}.{n}" for g, names in RETUNABLE.items() for n in names)


@dataclass
class KeptRun:
    """A results file written with kept scores (`run --keep-scores`), to decide again: a JSON Lines
    results file, or one shard's results (JSON Lines or Parquet) in a shard run's folder."""

    results: Path
    meta: KeptScoresMeta
    identity: RunIdentity | None
    rescorer: "Rescorer | None" = None  # the fp32 graphs, loaded at the first score that needs them
    shard: str | None = None  # the shard whose results these are (a shard run's folder)
    images: "PairImages | None" = None  # where a line's images are read again (default: its resolved paths)

    @classmethod
    def open(cls, results: str | Path) -> "KeptRun":
        results = Path(results)
        if not results.is_file():
            raise RunError(f"results file not found: {results}")
        return cls(results, KeptScoresMeta.read(scores_folder(results)), RunIdentity.read(results))

    @classmethod
    def open_all(cls, results: str | Path) -> "list[KeptRun]":
        """The kept runs of a results file (one), or of each committed shard of a shard run's
        folder (in shard order; their images are read again from the shards)."""
        results = Path(results)
        if not results.is_dir():
            return [cls.open(results)]
        from ..runs.shard_results import ShardImages, committed_results, read_run_record

        record = read_run_record(results)
        if record is None:
            raise RunError(f"{results} is a folder but not the output of a shard run (no run record in it); give a results file or folder")
        if not record["settings"].get("keep_scores"):
            raise RunError(f"{results} was written by a run without --keep-scores, so it has no scores to decide again; run with --keep-scores")
        images = ShardImages(results)
        read_pair = lambda fields: images.pair(fields.get("source") or {})  # noqa: E731 - the shard row of a results line
        runs = []
        for name, path in committed_results(results):
            run = cls.open(path)
            runs.append(dataclasses.replace(run, identity=None, shard=name, images=read_pair))
        return runs

    @property
    def params(self) -> OperatorParams:
        """The thresholds the scores were kept at (the run's own)."""
        return OperatorParams.from_mapping(self.meta.params)

    @property
    def band(self) -> BandSpec:
        return BandSpec(frozenset(self.meta.banded), dict(self.meta.margins))

    def count(self) -> int:
        """Results lines (rows) in the file."""
        if self.results.suffix == ".parquet":
            import pyarrow.parquet as pq

            return int(pq.ParquetFile(self.results).metadata.num_rows)
        return count_lines(self.results)

    def records(self) -> Iterator[dict]:
        """Each results line, parsed and checked to be the next result line of one run; RunError
        naming the line for anything else (a torn last line, a line that is not a result line of
        this tool, a line repeated or left out)."""
        if self.results.suffix == ".parquet":
            from ..runs.parquet_sink import read_results_parquet

            rows: Iterator[tuple[int, dict]] = enumerate(read_results_parquet(self.results), start=1)
        else:
            rows = self._jsonl_records()
        for number, record in rows:
            fields = record.get(RESULT_KEY)
            if not isinstance(fields, dict) or type(fields.get("line")) is not int or not isinstance(fields.get("input_digest"), str):
                raise RunError(f"{self.results}: line {number} is not a results line of this tool (no {RESULT_KEY} field with its line "
                               "and input digest)")  # fmt: skip
            if fields["line"] != number:
                raise RunError(f"{self.results}: line {number} holds the result of input line {fields['line']}; a results file holds "
                               "one line per input line, in order (a line repeated, removed or moved?)")  # fmt: skip
            yield record

    def _jsonl_records(self) -> Iterator[tuple[int, dict]]:
        size = self.results.stat().st_size
        if size:
            with open(self.results, "rb") as handle:
                handle.seek(size - 1)
                if handle.read(1) != b"\n":
                    raise RunError(f"{self.results}: its last line (line {count_lines(self.results)}) is torn (no line end): a run is still "
                                   "writing the file, or stopped mid-write; let it finish, or `run --resume` it (which drops the torn "
                                   "line and finishes the file), then retune")  # fmt: skip
        for raw in read_lines(self.results):
            try:
                yield raw.number, parse_record(raw)
            except LineError as exc:
                raise RunError(f"{self.results}: line {raw.number}: {exc}; not a results line of this tool") from None

    def lines(self) -> Iterator[tuple[dict, ScoreSheet | None]]:
        """Each results line (parsed) with its kept scores; None for a line that has none (an
        error, or a pair with no object words: no threshold changes those)."""
        sheets = read_sheets(scores_folder(self.results))
        pending = next(sheets, None)
        for record in self.records():
            fields = record[RESULT_KEY]
            number = fields["line"]
            while pending is not None and pending[0] < number:
                pending = next(sheets, None)
            sheet = None
            if pending is not None and pending[0] == number:
                if pending[1] != fields["input_digest"]:
                    raise RunError(f"{self.results}: the kept scores of line {number} are of another input line (the results file "
                                   "was changed after the run?)")  # fmt: skip
                if not all(isinstance(fields.get(k), list) and all(isinstance(w, str) for w in fields[k]) for k in ("objects1", "objects2")):
                    raise RunError(f"{self.results}: line {number} has kept scores but no lists of object words (objects1, objects2)")
                sheet = pending[2]
            elif fields.get("status") == "ok" and fields.get("counts"):
                raise RunError(f"{self.results}: line {number} has no kept scores; was it written by a run without --keep-scores?")
            yield record, sheet

    def decide(self, params: OperatorParams, models: Path | None = None) -> Iterator[tuple[dict, PairResult | None]]:
        """(results line, its result at `params`; None when the line stays as it is), in file order.
        Scores a banded model needs in fp32 are computed from the images with the fp32 graphs of
        `models` (default: the folder the run used), loaded at the first such score."""
        check_retunable(self.params, params)
        block: list[tuple[dict, ScoreSheet | None]] = []
        for item in self.lines():
            block.append(item)
            if len(block) == BLOCK:
                yield from self._decide_block(block, params, models)
                block = []
        if block:
            yield from self._decide_block(block, params, models)

    def _decide_block(self, block: list[tuple[dict, ScoreSheet | None]], params: OperatorParams, models: Path | None) -> list[tuple[dict, PairResult | None]]:
        band = self.band
        decided: list[Decision | None] = [None if sheet is None else _decide(record, sheet, params, band) for record, sheet in block]
        for k, d in enumerate(decided):
            if d is None or d.settled:
                continue
            if self.rescorer is None:
                from .rescore import Rescorer  # the fp32 graphs (onnxruntime): only when a score needs them

                self.rescorer = Rescorer.for_run(self.meta, models, self.images)
            record, sheet = block[k]
            for _ in range(ROUNDS):  # an fp32 score can let a window on to a gate whose score is in the band too
                self.rescorer.fill(record[RESULT_KEY], sheet, d.needs)  # type: ignore[arg-type]
                decided[k] = d = _decide(record, sheet, params, band)  # type: ignore[arg-type]
                if d.settled:
                    break
            else:
                raise RunError(f"line {record[RESULT_KEY]['line']}: {len(d.needs)} score(s) still missing after the fp32 re-scoring")  # internal: each round settles one more gate
        return [(record, None if d is None else d.result) for (record, _), d in zip(block, decided)]


def _decide(record: dict, sheet: ScoreSheet, params: OperatorParams, band: BandSpec) -> Decision:
    fields = record[RESULT_KEY]
    return decide(sheet, "", fields["objects1"], fields["objects2"], params, band)


def result_line(record: dict, result: PairResult | None) -> str:
    """The results line a fresh run writes for this record and result (the record's other keys as
    they were, its result fields as `run` writes them, without timings)."""
    fields = record[RESULT_KEY]
    if result is None:
        kept = dict(record)
        kept[RESULT_KEY] = {k: v for k, v in fields.items() if k != "times"}
        return strict_dumps(kept)
    original = {k: v for k, v in record.items() if k != RESULT_KEY}
    pair = PairInput(fields.get("image_path1_resolved"), fields.get("image_path2_resolved"))  # none for a shard's image bytes
    return output_line(InputLine(fields["line"], original, pair, None, fields["input_digest"], fields.get("source")), result, False)


@dataclass(frozen=True)
class RetuneOptions:
    overwrite: bool = False
    progress: bool = True
    models: Path | None = None  # the model folder for fp32 re-scores (default: the one the run used)
    precision: object = None  # a params file's `precision`: it must be the kept run's (retune cannot change it)


def check_precision(kept: KeptRun, asked: object) -> None:
    """A precision asked of a retune (a params file's) must be the one the scores were computed at."""
    if asked is None:
        return
    from ..engine.precision import Precision

    if Precision.parse(asked) != Precision.parse(kept.meta.precision):  # type: ignore[arg-type]
        raise ParameterError(f"precision: {Precision.parse(asked)} asked (--params), the kept scores were computed at "  # type: ignore[arg-type]
                             f"{Precision.parse(kept.meta.precision)}; retune cannot change it: run again with that precision "
                             "and --keep-scores, or drop precision from the params file", "precision")  # fmt: skip


def _write_decided(kept: KeptRun, params: OperatorParams, models: Path | None, out: BinaryIO, counts: dict[str, int], bar: ProgressBar,
                   stop: GracefulStop, left: str) -> None:  # fmt: skip
    """`kept`'s lines decided at `params`, written to `out` (fsync'ed), counted; a stop signal
    raises Interrupted saying `left` (what the stop leaves)."""
    for record, result in kept.decide(params, models):
        if stop.signum is not None:
            raise Interrupted(stop.signum, left)
        out.write((result_line(record, result) + "\n").encode("utf-8"))
        counts["lines"] += 1
        boxes = record[RESULT_KEY].get("boxes") or []
        evidence = [e.get("candidate") for e in record[RESULT_KEY].get("evidence") or [] if isinstance(e, dict)]
        counts["changed"] += result is not None and (len(result.kept) != len(boxes) or result.kept != evidence)
        bar.update()
    out.flush()
    os.fsync(out.fileno())


def retune_file(results: Path, params: OperatorParams, output: Path, options: RetuneOptions = RetuneOptions()) -> dict[str, int]:
    """Write `output`: `results` decided again at `params`, and its run record (so that `run
    --resume` continues it where `results` was unfinished). A results folder of a shard run is
    retuned shard by shard into the folder `output` (retune_folder). Returns counts: lines
    written, lines whose boxes changed, scores computed in fp32.

    The new results are written under a temporary name and take `output`'s name when complete:
    a failure, or a stop, leaves an existing `output` as it was."""
    if Path(results).is_dir():
        return retune_folder(Path(results), params, output, options)
    kept = KeptRun.open(results)
    check_retunable(kept.params, params)  # before the output is touched
    check_precision(kept, options.precision)
    _check_output(results, output, options.overwrite, kept.identity)
    try:
        lock = OutputLock(output).acquire()
    except OutputInUse as exc:
        raise RunError(str(exc)) from None
    counts = {"lines": 0, "changed": 0, "rescored": 0}
    tmp = lock.real.with_name(f".{lock.real.name}.retune.tmp")
    left = f"nothing of this retune was written ({'the earlier ' + str(output) + ' is as it was' if lock.real.stat().st_size else str(output) + ' was not created'}); run the same command again"
    try:
        with GracefulStop("stopping; nothing of this retune is kept") as stop, open(tmp, "wb") as out:
            bar = ProgressBar(kept.count(), options.progress, unit="line")
            try:
                _write_decided(kept, params, options.models, out, counts, bar, stop, left)
            finally:
                bar.close()
        drop_scores(lock.real)  # the replaced file's kept scores (if any) are not the new lines'
        if kept.identity is not None:
            identity = dataclasses.replace(kept.identity, params=params_text(params.to_dicts()), timings=False, keep_scores=False)
            identity.write(lock.real)
        os.replace(tmp, lock.real)
        fsync_folder(lock.real.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        lock.release()  # an output this retune created is removed again: nothing of it is left
        raise
    lock.release(keep=True)  # (the lock's own file, still empty, is no longer at the output's name)
    counts["rescored"] = kept.rescorer.rescored if kept.rescorer is not None else 0
    return counts


def retune_folder(results: Path, params: OperatorParams, output: Path, options: RetuneOptions = RetuneOptions()) -> dict[str, int]:
    """A shard run's folder (`run --keep-scores` on shards) decided again at `params`, shard by
    shard, into the folder `output`: each committed shard's results under the same name and
    format, committed whole, with a run record that `run --resume` continues (its shards not
    committed in `results` are then computed). Returns the counts retune_file returns."""
    from ..runs.jsonl import RunOptions
    from ..runs.shard_results import ERRORS, read_run_record
    from ..runs.parquet_sink import parquet_schema
    from ..runs.shard_run import ShardFolder, ShardOptions

    runs = KeptRun.open_all(results)  # every committed shard's scores record read, before the output is touched
    shard_errors = _shard_errors(results / ERRORS)
    record = read_run_record(results) or {}
    for kept in runs:
        check_retunable(kept.params, params)
        check_precision(kept, options.precision)
    real_in, real_out = Path(os.path.realpath(results)), Path(os.path.realpath(output))
    if real_out == real_in or real_out.is_relative_to(real_in) or real_in.is_relative_to(real_out):
        raise RunError(f"--output {output} would hold or be inside the results folder {results}; write to another folder")
    if output.is_dir() and read_run_record(output) is not None and not options.overwrite:
        raise RunError(f"{output} holds the results of a run; pass --overwrite to replace them, or choose another --output")
    settings = dict(record["settings"]) | {"params": params_text(params.to_dicts()), "timings": False, "keep_scores": False}
    shard_options = ShardOptions(output_format=str(settings.get("output_format") or "jsonl"))
    folder = ShardFolder([], output, RunOptions(overwrite=options.overwrite), shard_options, settings, entries=record["shards"])
    counts = {"lines": 0, "changed": 0, "rescored": 0}
    bar = ProgressBar(sum(k.count() for k in runs), options.progress, unit="line")
    rescorer = None
    left = f"nothing of this retune was kept in {output}; run the same command again (with --overwrite if it was there before)"
    try:
        with GracefulStop("stopping; nothing of this retune is kept") as stop:
            for kept in runs:
                kept.rescorer = rescorer  # the fp32 graphs load once for the folder
                with folder.open_partial(str(kept.shard)) as out:
                    out.truncate(0)
                    _write_decided(kept, params, options.models, out, counts, bar, stop, left)
                folder.commit(str(kept.shard), parquet_schema(kept.results))
                rescorer = kept.rescorer
        for entry in shard_errors:
            folder.shard_error(str(entry.get("shard")), str(entry.get("error")))
    except BaseException:
        folder.discard()  # a retune that did not finish leaves nothing of its own
        raise
    finally:
        bar.close()
        folder.close()
    counts["rescored"] = rescorer.rescored if rescorer is not None else 0
    return counts


def _shard_errors(path: Path) -> list[dict]:
    """The shard errors a shard run listed (carried to the retuned folder); one line for a damaged list."""
    if not path.is_file():
        return []
    try:
        entries = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, ValueError) as exc:
        raise RunError(f"{path}: the run's list of shard errors cannot be read ({exc})") from None
    if not all(isinstance(e, dict) for e in entries):
        raise RunError(f"{path}: the run's list of shard errors is not one of this tool's")
    return entries


def _check_output(results: Path, output: Path, overwrite: bool, identity: RunIdentity | None) -> None:
    """`run`'s output rule (runs.jsonl.check_output), with the results as the input, and the
    input of the run that wrote them too."""
    from ..runs.jsonl import RunOptions, check_output

    if identity is not None and identity.input:
        check_not_input(Path(identity.input), output)
    check_output(results, output, RunOptions(overwrite=overwrite), resumable=False)
