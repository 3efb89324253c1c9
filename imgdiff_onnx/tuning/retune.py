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
from typing import TYPE_CHECKING

from ..errors import ParameterError, RunError
from ..runs.jsonlines import count_lines, read_lines, strict_dumps
from ..pairs import PairInput, PairResult, ScoreSheet
from ..params import OperatorParams
from ..runs.progress import ProgressBar
from ..runs.records import RESULT_KEY, InputLine, output_line
from ..runs.runfile import OutputInUse, OutputLock, RunIdentity, check_not_input, params_text
from ..engine.decide import BandSpec, Decision, decide
from .sheet import KeptScoresMeta, read_sheets, scores_folder

if TYPE_CHECKING:
    from .rescore import Rescorer

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
    """A results file written with kept scores (`run --keep-scores`), to decide again."""

    results: Path
    meta: KeptScoresMeta
    identity: RunIdentity | None
    rescorer: "Rescorer | None" = None  # the fp32 graphs, loaded at the first score that needs them

    @classmethod
    def open(cls, results: str | Path) -> "KeptRun":
        results = Path(results)
        if not results.is_file():
            raise RunError(f"results file not found: {results}")
        return cls(results, KeptScoresMeta.read(scores_folder(results)), RunIdentity.read(results))

    @property
    def params(self) -> OperatorParams:
        """The thresholds the scores were kept at (the run's own)."""
        return OperatorParams.from_mapping(self.meta.params)

    @property
    def band(self) -> BandSpec:
        return BandSpec(frozenset(self.meta.banded), dict(self.meta.margins))

    def lines(self) -> Iterator[tuple[dict, ScoreSheet | None]]:
        """Each results line (parsed) with its kept scores; None for a line that has none (an
        error, or a pair with no object words: no threshold changes those)."""
        sheets = read_sheets(scores_folder(self.results))
        pending = next(sheets, None)
        for raw in read_lines(self.results):
            if raw.data is None:
                raise RunError(f"{self.results}: line {raw.number} is longer than a results line may be ({raw.length} bytes)")
            record = json.loads(raw.data)
            fields = record.get(RESULT_KEY, {})
            number = fields.get("line")
            while pending is not None and pending[0] < number:
                pending = next(sheets, None)
            sheet = None
            if pending is not None and pending[0] == number:
                if pending[1] != fields.get("input_digest"):
                    raise RunError(f"{self.results}: the kept scores of line {number} are of another input line (the results file "
                                   "was changed after the run?)")  # fmt: skip
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

                self.rescorer = Rescorer.for_run(self.meta, models)
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
    pair = PairInput(fields["image_path1_resolved"], fields["image_path2_resolved"])
    return output_line(InputLine(fields["line"], original, pair, None, fields["input_digest"]), result, False)


@dataclass(frozen=True)
class RetuneOptions:
    overwrite: bool = False
    progress: bool = True
    models: Path | None = None  # the model folder for fp32 re-scores (default: the one the run used)


def retune_file(results: Path, params: OperatorParams, output: Path, options: RetuneOptions = RetuneOptions()) -> dict[str, int]:
    """Write `output`: `results` decided again at `params`, and its run record (so that `run
    --resume` continues it where `results` was unfinished). Returns counts: lines written, lines
    whose boxes changed, scores computed in fp32."""
    kept = KeptRun.open(results)
    check_retunable(kept.params, params)  # before the output is touched
    _check_output(results, output, options.overwrite, kept.identity)
    try:
        lock = OutputLock(output).acquire()
    except OutputInUse as exc:
        raise RunError(str(exc)) from None
    counts = {"lines": 0, "changed": 0, "rescored": 0}
    total = count_lines(results)
    try:
        with open(lock.real, "r+b") as out:
            out.truncate(0)
            if kept.identity is not None:
                identity = dataclasses.replace(kept.identity, params=params_text(params.to_dicts()), timings=False, keep_scores=False)
                identity.write(lock.real)
            bar = ProgressBar(total, options.progress, unit="line")
            for record, result in kept.decide(params, options.models):
                out.write((result_line(record, result) + "\n").encode("utf-8"))
                counts["lines"] += 1
                counts["changed"] += result is not None and len(result.kept) != len(record[RESULT_KEY]["boxes"]) or (
                    result is not None and result.kept != [e["candidate"] for e in record[RESULT_KEY]["evidence"]])
                bar.update()
            bar.close()
            out.flush()
            os.fsync(out.fileno())
    finally:
        lock.release(keep=True)
    counts["rescored"] = kept.rescorer.rescored if kept.rescorer is not None else 0
    return counts


def _check_output(results: Path, output: Path, overwrite: bool, identity: RunIdentity | None) -> None:
    check_not_input(results, output)
    if identity is not None and identity.input:
        check_not_input(Path(identity.input), output)
    if output.is_dir():
        raise RunError(f"--output {output} is a folder; give the results file's name")
    if output.exists() and output.stat().st_size > 0:
        from ..runs.jsonl import is_results_file

        if not overwrite:
            raise RunError(f"{output} exists; pass --overwrite to replace it")
        if not is_results_file(output):
            raise RunError(f"{output} is not a results file of this tool; --overwrite replaces only those")
