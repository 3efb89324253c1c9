"""`validate`: what int8 changes on your own pairs, stage by stage, and which precision to run.

The pairs run through the engine once with every model fp32 (the faithful reference), then once
per model with only that model int8 (so each change is attributed to one graph), and once more
with the recommended mix when it has more than one int8 model. Each run keeps every score its
gates computed, keyed by crop window, so runs are compared on the same inputs:

- clip: whole-pair similarity |delta|, whole-pair gate flips; crop-pair similarity |delta| and flips;
- fastsam: candidate boxes F1 at IoU 0.9 and the change in their number;
- blip: ITM probability |delta| and flips at your thresholds;
- every run: final boxes F1 against the fp32 run, pairs whose status or exit differs, CPU time.

The guard band (imgdiff_onnx.engine.band): the clip and blip int8 runs give the largest int8 error of each
score on your pairs, against the margin in the manifest; a run with CLIP and BLIP banded (when the
folder has margins) gives the share of scores that were re-scored in fp32 (the band's hit rate),
its CPU time, and its boxes against fp32's. `--write` widens a margin your pairs exceed.

FastSAM's int8 graph is recommended when its run keeps the final boxes and the candidates (F1 >=
min_box_f1, min_candidate_f1) and saves CPU time; CLIP and BLIP run banded when their int8 graph
saves CPU time (the band keeps fp32's decisions), otherwise fp32.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..engine import boxes as bx
from ..engine.band import SAFETY, SCORE_MODEL, SCORES, BandTally, GuardBand, Margin
from ..errors import ModelFolderError, ParameterError, RunError
from ..runs.records import source_text
from ..runs.shards import input_lines
from ..engine.manifest import read as read_manifest
from ..engine.modelset import ModelSet, SessionPool, resolve_precision
from ..params import OperatorParams
from ..engine.pipeline import DifferenceAreaGenerator, EngineSettings, PairFailure, PairInput, PairResult
from ..engine.precision import BANDED, DEFAULT, MODELS, Precision
from ..settings import PAIRS_PER_BATCH
from ..runs.progress import ProgressBar

log = logging.getLogger(__name__)

FP32 = Precision.uniform("fp32")


@dataclass(frozen=True)
class ValidateOptions:
    """min_box_f1: final boxes of a model's int8 run vs the fp32 run (micro F1 at IoU 0.9) needed
    to recommend that int8 graph; min_candidate_f1 likewise for FastSAM's candidates; min_saving:
    the CPU-time saving (fraction of the fp32 run) an int8 graph must bring to be worth any risk."""

    limit: int | None = None
    min_box_f1: float = 0.99
    min_candidate_f1: float = 0.99
    min_saving: float = 0.05
    threads: int = 0
    crop_batch_size: int = EngineSettings.crop_batch_size
    pairs_per_batch: int = PAIRS_PER_BATCH
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("min_box_f1", "min_candidate_f1", "min_saving"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ParameterError(f"{name} must be in [0, 1], got {getattr(self, name)}", name)
        if self.limit is not None and self.limit < 1:
            raise ParameterError(f"limit must be >= 1, got {self.limit}", "limit")


@dataclass
class ConfigRun:
    name: str
    precision: Precision
    outcomes: list[PairResult | PairFailure]
    wall_seconds: float
    cpu_seconds: float


def run_config(
    name: str,
    models: Path,
    precision: Precision,
    params: OperatorParams,
    pairs: list[PairInput],
    options: ValidateOptions,
    pool: SessionPool,
    on_pair: Callable[[], None] | None = None,
) -> ConfigRun:
    """Every pair through the engine at `precision`, with diagnostics; load time not counted."""
    settings = EngineSettings(precision=precision, threads=options.threads, crop_batch_size=options.crop_batch_size, diagnostics=True)
    engine = DifferenceAreaGenerator(ModelSet(models, precision, pool=pool), params, settings)
    outcomes: list[PairResult | PairFailure] = []
    wall, cpu = time.perf_counter(), time.process_time()
    for outcome in engine.process_many(pairs, options.pairs_per_batch):
        outcomes.append(outcome)
        if on_pair is not None:
            on_pair()
    return ConfigRun(name, precision, outcomes, time.perf_counter() - wall, time.process_time() - cpu)


@dataclass
class _Deltas:
    """|delta| of one score over the inputs both runs scored, and how many decisions flipped."""

    values: list[float] = field(default_factory=list)
    flips: int = 0

    def add(self, a: float, b: float, low: float, high: float) -> None:
        self.values.append(abs(a - b))
        self.flips += (low <= a <= high) != (low <= b <= high)

    def summary(self) -> dict:
        v = np.asarray(self.values, dtype=np.float64)
        return {
            "compared": int(v.size),
            "max_abs_delta": float(v.max()) if v.size else 0.0,
            "mean_abs_delta": float(v.mean()) if v.size else 0.0,
            "decision_flips": int(self.flips),
        }


def _compare_common(ref: dict, other: dict, deltas: _Deltas, low: float, high: float) -> None:
    for key in ref.keys() & other.keys():
        deltas.add(ref[key], other[key], low, high)


def score_deltas(reference: ConfigRun, run: ConfigRun, params: OperatorParams) -> dict[str, _Deltas]:
    """|delta| of each decision score (band.SCORES) on the inputs both runs scored."""
    p, m = params.pair, params.matching
    deltas = {score: _Deltas() for score in SCORES}
    for ref, out in zip(reference.outcomes, run.outcomes):
        if isinstance(ref, PairFailure) or isinstance(out, PairFailure):
            continue
        if ref.pair_similarity is not None and out.pair_similarity is not None:
            deltas["pair_similarity"].add(ref.pair_similarity, out.pair_similarity, p.min_score_1, p.max_score_1)
        _compare_common(ref.diagnostics.get("crop_pair", {}), out.diagnostics.get("crop_pair", {}), deltas["crop_similarity"], p.min_score_2, p.max_score_2)
        for side in ("itm_image1", "itm_image2"):
            _compare_common(ref.diagnostics.get(side, {}), out.diagnostics.get(side, {}), deltas["itm_probability"], m.min_score, m.max_score)
    return deltas


def compare(reference: ConfigRun, run: ConfigRun, params: OperatorParams) -> dict:
    """Stage-by-stage figures of `run` against `reference`, on the inputs both computed."""
    deltas = score_deltas(reference, run, params)
    cand = {"matches": 0, "boxes": 0, "count_change": 0, "compared_pairs": 0}
    final = {"matches": 0, "boxes": 0, "identical_pairs": 0, "compared_pairs": 0, "min_pair_f1": 1.0}
    status_differs = exit_differs = 0
    for ref, out in zip(reference.outcomes, run.outcomes):
        if isinstance(ref, PairFailure) or isinstance(out, PairFailure):
            status_differs += isinstance(ref, PairFailure) != isinstance(out, PairFailure)
            continue
        exit_differs += ref.exit_reason != out.exit_reason
        if ref.candidate_boxes is not None and out.candidate_boxes is not None:
            cand["matches"] += bx.box_matches(ref.candidate_boxes, out.candidate_boxes)
            cand["boxes"] += len(ref.candidate_boxes) + len(out.candidate_boxes)
            cand["count_change"] += len(out.candidate_boxes) - len(ref.candidate_boxes)
            cand["compared_pairs"] += 1
        matches = bx.box_matches(ref.boxes, out.boxes)
        n = len(ref.boxes) + len(out.boxes)
        final["matches"] += matches
        final["boxes"] += n
        final["compared_pairs"] += 1
        final["identical_pairs"] += bool(len(ref.boxes) == len(out.boxes) and np.array_equal(ref.boxes, out.boxes))
        final["min_pair_f1"] = min(final["min_pair_f1"], 1.0 if n == 0 else 2.0 * matches / n)
    return {
        "pair_similarity": deltas["pair_similarity"].summary(),
        "candidates": {
            "f1": 1.0 if cand["boxes"] == 0 else 2.0 * cand["matches"] / cand["boxes"],
            "count_change": cand["count_change"],
            "compared_pairs": cand["compared_pairs"],
        },
        "crop_pair_similarity": deltas["crop_similarity"].summary(),
        "itm_probability": deltas["itm_probability"].summary(),
        "final_boxes": {
            "f1": 1.0 if final["boxes"] == 0 else 2.0 * final["matches"] / final["boxes"],
            "min_pair_f1": final["min_pair_f1"],
            "identical_pairs": final["identical_pairs"],
            "compared_pairs": final["compared_pairs"],
        },
        "status_differs": status_differs,
        "exit_reason_differs": exit_differs,
    }


def timing(run: ConfigRun, reference: ConfigRun, pairs: int) -> dict:
    n = max(1, pairs)
    return {
        "wall_s_per_pair": run.wall_seconds / n,
        "cpu_s_per_pair": run.cpu_seconds / n,
        "cpu_saving_vs_fp32": 0.0 if reference.cpu_seconds <= 0 else 1.0 - run.cpu_seconds / reference.cpu_seconds,
    }


def faithful(figures: dict, model: str | None, options: ValidateOptions) -> tuple[bool, str]:
    """Does this run keep the fp32 run's result? (and why not)"""
    f = figures
    if f["status_differs"]:
        return False, f"{f['status_differs']} pair(s) failed in one run only"
    if f["final_boxes"]["f1"] < options.min_box_f1:
        return False, f"final boxes F1 {f['final_boxes']['f1']:.4f} < {options.min_box_f1}"
    if model == "fastsam" and f["candidates"]["f1"] < options.min_candidate_f1:
        return False, f"candidate boxes F1 {f['candidates']['f1']:.4f} < {options.min_candidate_f1}"
    return True, f"final boxes F1 {f['final_boxes']['f1']:.4f} >= {options.min_box_f1}"


def verdict(model: str, figures: dict, times: dict, options: ValidateOptions) -> dict:
    """FastSAM: int8 if its run is faithful and saves enough. CLIP, BLIP: banded if int8 saves
    enough (the band decides as fp32 wherever int8 scores come near a threshold)."""
    saving = times["cpu_saving_vs_fp32"]
    if model != "fastsam":
        ok, why = saving >= options.min_saving, f"int8 alone: {faithful(figures, model, options)[1]}"
        why = f"{why}; int8 saves {saving:.0%} CPU time" + ("" if ok else f" (< {options.min_saving:.0%}), not worth the band")
        return {"model": model, "precision": BANDED if ok else "fp32", "why": why}
    ok, why = faithful(figures, model, options)
    if ok and saving < options.min_saving:
        ok, why = False, f"{why}, but it saves only {saving:.1%} CPU time (< {options.min_saving:.0%})"
    elif ok:
        why = f"{why}; saves {saving:.0%} CPU time"
    return {"model": model, "precision": "int8" if ok else "fp32", "why": why}


def single_int8(model: str) -> Precision:
    return Precision(**{m: "int8" if m == model else "fp32" for m in MODELS})


def recommend(
    verdicts: dict[str, dict], single_figures: dict[str, dict], check: Callable[[Precision], tuple[bool, str]]
) -> tuple[Precision, list[dict]]:
    """The verdicts' mix; when it has several int8 models it is run and, while it loses the fp32
    result, the int8 model with the lowest single-run F1 goes back to fp32."""
    int8 = [m for m in MODELS if verdicts[m]["precision"] == "int8"]
    banded = {m: BANDED for m in MODELS if verdicts[m]["precision"] == BANDED}
    checks = []
    while len(int8) > 1:
        mix = Precision(**{m: "int8" if m in int8 else "fp32" for m in MODELS} | banded)
        ok, why = check(mix)
        checks.append({"precision": str(mix), "faithful": ok, "why": why})
        if ok:
            return mix, checks
        int8.remove(min(int8, key=lambda m: single_figures[m]["final_boxes"]["f1"]))
    return Precision(**{m: "int8" if m in int8 else "fp32" for m in MODELS} | banded), checks


def band_figures(
    band: GuardBand | None, reference: ConfigRun, runs: dict[str, ConfigRun], banded: ConfigRun | None, params: OperatorParams, input_name: str
) -> dict:
    """Per score: the manifest's margin, the largest int8 error on these pairs (from the model's
    int8 run against fp32), whether the margin covers it, the margin these pairs call for, and
    the banded run's re-scored share. "observed" holds what `--write` widens the band to."""
    tally = BandTally.empty()
    for outcome in banded.outcomes if banded is not None else []:
        if isinstance(outcome, PairResult) and outcome.band:
            tally.merge(outcome.band)
    figures: dict = {"scores": {}, "observed": {}}
    by_model = {model: score_deltas(reference, runs[model], params) for model in set(SCORE_MODEL.values())}  # each score's error: its model's int8 run
    for score, model in SCORE_MODEL.items():
        deltas = by_model[model][score]
        worst = max(deltas.values, default=None)
        margin = band.margin(score) if band is not None else None
        scored, rescored = tally.scored.get(score, 0), tally.rescored.get(score, 0)
        figures["scores"][score] = {
            "margin": margin,
            "max_error_here": worst,
            "compared": len(deltas.values),
            "margin_holds": None if margin is None or worst is None else worst <= margin,
            "margin_here": None if worst is None else SAFETY * worst,
            "scored": scored,
            "rescored": rescored,
            "hit_rate": rescored / scored if scored else None,
        }
        if deltas.values:
            figures["observed"][score] = Margin.from_errors(np.asarray(deltas.values), f"{input_name}: {len(deltas.values)} scores", "validate").to_json()
    return figures


def read_pairs(input_path: Path, limit: int | None) -> tuple[list[PairInput], list[str]]:
    """The input's pairs (a JSON Lines file or shards; held in memory, images too when they come
    as bytes), and the errors of records that cannot be read (skipped, reported)."""
    pairs, errors = [], []
    for line in input_lines(input_path, limit):
        if line.pair is None:
            errors.append(f"{source_text(line.source) if line.source else f'line {line.number}'}: {line.error}")
        else:
            pairs.append(line.pair)
    return pairs, errors


def validate(models: Path, params: OperatorParams, input_path: Path, options: ValidateOptions) -> dict:
    """Run the configurations on the input's pairs; the summary that `write_outputs` renders."""
    manifest = read_manifest(Path(models))
    if "int8" not in manifest.precisions or "fp32" not in manifest.precisions:
        raise ModelFolderError(f"{models}: validate compares fp32 with int8 graphs; the folder has {list(manifest.precisions)}")
    pairs, bad_lines = read_pairs(input_path, options.limit)
    if not pairs:
        raise RunError(f"{input_path}: no readable pairs to validate" + (f" ({bad_lines[0]})" if bad_lines else ""))
    pool = SessionPool()
    planned = ["fp32"] + [f"{m} int8" for m in MODELS]
    bar = ProgressBar(len(pairs) * len(planned), options.progress, unit="pair-run")

    def run(name: str, precision: Precision) -> ConfigRun:
        bar.describe(name)
        log.info("validate: running %d pairs with %s", len(pairs), precision)
        return run_config(name, Path(models), precision, params, pairs, options, pool, bar.update)

    try:
        reference = run("fp32", FP32)
        runs, figures, times, verdicts = {}, {}, {}, {}
        for model in MODELS:
            name = f"{model} int8"
            runs[model] = run(name, single_int8(model))
            figures[model] = compare(reference, runs[model], params)
            times[model] = timing(runs[model], reference, len(pairs))
            verdicts[model] = verdict(model, figures[model], times[model], options)
        mixes: dict[str, tuple[ConfigRun, dict, dict]] = {}

        def check(mix: Precision) -> tuple[bool, str]:
            bar.grow(len(pairs))
            mix_run = run(f"mix {mix}", mix)
            mix_figures = compare(reference, mix_run, params)
            mixes[str(mix)] = (mix_run, mix_figures, timing(mix_run, reference, len(pairs)))
            return faithful(mix_figures, None, options)

        recommended, mix_checks = recommend(verdicts, figures, check)
        banded_run = None
        if manifest.guard_band is not None:
            bar.grow(len(pairs))
            banded_run = run("clip+blip banded", DEFAULT)
    finally:
        bar.close()
    configs = [{"name": "fp32", "precision": "fp32", "figures": None, "timing": timing(reference, reference, len(pairs))}]
    configs += [{"name": f"{m} int8", "precision": str(single_int8(m)), "figures": figures[m], "timing": times[m]} for m in MODELS]
    configs += [{"name": f"mix {k}", "precision": k, "figures": f, "timing": t} for k, (_, f, t) in mixes.items()]
    if banded_run is not None:
        configs.append({"name": banded_run.name, "precision": str(DEFAULT), "figures": compare(reference, banded_run, params),
                        "timing": timing(banded_run, reference, len(pairs))})  # fmt: skip
    band = band_figures(manifest.guard_band, reference, runs, banded_run, params, str(Path(input_path).resolve()))
    current, origin = resolve_precision(None, manifest, Path(models))
    return {
        "models": str(Path(models).resolve()),
        "input": str(Path(input_path).resolve()),
        "pairs": len(pairs),
        "skipped_lines": bad_lines,
        "pair_errors": sum(isinstance(o, PairFailure) for o in reference.outcomes),
        "params": params.to_dicts(),
        "options": {k: getattr(options, k) for k in ("min_box_f1", "min_candidate_f1", "min_saving", "threads", "limit")},
        "configs": configs,
        "verdicts": verdicts,
        "mix_checks": mix_checks,
        "recommended_precision": recommended.to_dict(),
        "recommended_precision_text": str(recommended),
        "current_default": {"precision": str(current), "origin": origin},
        "guard_band": band,
        "random_init": bool(manifest.random_init),
    }
