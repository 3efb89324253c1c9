"""The gates' decisions from a pair's kept scores, as the engine's gated run makes them.

`decide` gives the PairResult a run with `params` gives on the same models: the same boxes,
evidence, exit reason, per-gate counts and guard-band tally. It follows the engine's gated run
(imgdiff_onnx.engine.pipeline), not a simplification of it:

- S1: outside [min_score_1, max_score_1] the pair stops before FastSAM (no counts).
- S6 on every distinct non-degenerate window; S5 on crop 1 for the S6 survivors, each window
  trying the words of objects1 in order (a repeated word skipped) up to the first that passes;
  S5 on crop 2 for the crop-1 survivors; S7 greedy overlap removal in candidate order.
- A banded model's score within the guard band of the new thresholds decides by its fp32 value,
  and counts as re-scored, exactly where the gated run would have scored it again. When the
  sheet has no fp32 value for such a score (it was outside the band of the thresholds the scores
  were kept at), the decision is `unsettled`: `Decision.needs` says which scores must be computed
  in fp32 (imgdiff_onnx.tuning.rescore) before the result is exact.

Per pair the work is a few numpy operations on the pair's windows (no Python loop over them),
so a hundred thousand pairs decide in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import boxes as bx
from .band import SCORE_MODEL, SCORES, near
from ..pairs import EMPTY_BOXES, BoxEvidence, PairResult, ScoreSheet
from ..params import OperatorParams, PairSimilarityArgs


@dataclass(frozen=True)
class BandSpec:
    """Which models are banded and each score's margin (empty: no guard band)."""

    banded: frozenset[str] = frozenset()
    margins: dict[str, float] = field(default_factory=dict)

    def margin(self, score: str) -> float | None:
        """The score's margin, or None when its model is not banded."""
        return self.margins[score] if SCORE_MODEL[score] in self.banded else None


NO_BAND = BandSpec()


@dataclass(frozen=True)
class Need:
    """A score the decision needs in fp32: `score` of `window` (None: the whole pair), and for an
    ITM probability the crop's `side` and the index of its `word` in that side's objects list."""

    score: str
    window: int | None = None
    side: int = 0
    word: int = 0


@dataclass
class Decision:
    result: PairResult
    needs: list[Need]  # empty: the result is exactly the gated run's

    @property
    def settled(self) -> bool:
        return not self.needs


def pair_exit_reason(similarity: float, p: PairSimilarityArgs) -> str | None:
    """S1: why the pair stops, or None when its similarity is in [min_score_1, max_score_1]."""
    if p.min_score_1 <= similarity <= p.max_score_1:
        return None
    return f"pair similarity {similarity:.4f} outside [{p.min_score_1}, {p.max_score_1}]"


def _banded_values(scores: np.ndarray, lo: float, hi: float, margin: float | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values that decide, in the band, in the band without an fp32 value) for scores [..., 2].
    Where the fp32 value is missing the score as computed stands in (a sweep's approximation; a
    retune computes it and decides again)."""
    primary, fp32 = scores[..., 0], scores[..., 1]
    if margin is None:
        none = np.zeros(primary.shape, dtype=bool)
        return primary, none, none
    band = near(primary, lo, hi, margin)
    missing = band & np.isnan(fp32)
    return np.where(band & ~missing, fp32, primary), band, missing


def _inside(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return (lo <= values) & (values <= hi)


@dataclass
class _Tally:
    band: dict[str, list[int]] = field(default_factory=dict)  # score -> [scored, rescored]
    needs: list[Need] = field(default_factory=list)

    def add(self, score: str, scored: int, rescored: int) -> None:
        entry = self.band.setdefault(score, [0, 0])
        entry[0] += scored
        entry[1] += rescored


def _first_matches(itm: np.ndarray, words: list[str], reach: np.ndarray, lo: float, hi: float, margin: float | None,
                   side: int, tally: _Tally) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """S5 on one side for the windows in `reach`: (passes, word index, probability) per window,
    as imgdiff_onnx.engine.stages.matching.first_matching_words decides, with its band tally."""
    n_windows, n_words = itm.shape[:2]
    values, band, missing = _banded_values(itm, lo, hi, margin)
    first_time = np.array([w not in words[:j] for j, w in enumerate(words)], dtype=bool)
    ok = _inside(values, lo, hi) & first_time[None, :] & reach[:, None]
    passes = ok.any(axis=1)
    first = np.where(passes, ok.argmax(axis=1), n_words)
    tried = reach[:, None] & first_time[None, :] & (np.arange(n_words)[None, :] <= first[:, None])
    if margin is not None and tried.any():
        tally.add("itm_probability", int(tried.sum()), int((band & tried).sum()))
        for w, j in zip(*np.nonzero(missing & tried)):
            tally.needs.append(Need("itm_probability", int(w), side, int(j)))
    chosen = np.minimum(first, max(n_words - 1, 0))
    probability = values[np.arange(n_windows), chosen] if n_words else np.zeros(n_windows)
    return passes, chosen, probability


def decide(sheet: ScoreSheet, key: str, objects1: list[str], objects2: list[str], params: OperatorParams, band: BandSpec = NO_BAND) -> Decision:
    """The result a gated run with `params` gives for this pair (see the module's doc)."""
    tally = _Tally()
    result = PairResult(key, EMPTY_BOXES, list(objects1), list(objects2), None, None)
    similarity = _pair_value(sheet, params.pair, band, tally)
    result.pair_similarity = similarity
    reason = pair_exit_reason(similarity, params.pair)
    if reason is not None:
        result.exit_reason = reason
        result.band = _band_record(tally)
        return Decision(result, tally.needs)
    p, m = params.pair, params.matching
    valid = sheet.window_valid
    crop_margin = band.margin("crop_similarity")
    crop_values, crop_band, crop_missing = _banded_values(sheet.crop, p.min_score_2, p.max_score_2, crop_margin)
    crop_values = np.where(sheet.window_identical, 1.0, crop_values)
    scored = valid & ~sheet.window_identical
    if crop_margin is not None and scored.any():
        tally.add("crop_similarity", int(scored.sum()), int((crop_band & scored).sum()))
        tally.needs.extend(Need("crop_similarity", int(w)) for w in np.flatnonzero(crop_missing & scored))
    after6 = valid & _inside(crop_values, p.min_score_2, p.max_score_2)
    itm_margin = band.margin("itm_probability")
    after5a, word1, itm1 = _first_matches(sheet.itm1, objects1, after6, m.min_score, m.max_score, itm_margin, 1, tally)
    after5b, word2, itm2 = _first_matches(sheet.itm2, objects2, after5a, m.min_score, m.max_score, itm_margin, 2, tally)
    per_candidate = [(valid & after6)[sheet.window_of], (after5a & after6)[sheet.window_of], (after5b & after5a)[sheet.window_of]]
    survivors = [int(k) for k in np.flatnonzero(per_candidate[-1])]
    boxes = sheet.boxes.astype(np.float32)
    kept_local = bx.greedy_overlap_filter(boxes[survivors], params.overlap_iou) if survivors else np.zeros(0, dtype=np.int64)
    result.candidate_boxes = boxes
    result.survivors = survivors
    result.kept = [survivors[k] for k in kept_local]
    result.boxes = boxes[result.kept].reshape(-1, 4)
    for k in result.kept:
        w = int(sheet.window_of[k])
        result.evidence.append(BoxEvidence(k, 1 if k < sheet.boxes1 else 2, objects1[word1[w]], float(itm1[w]), objects2[word2[w]],
                                           float(itm2[w]), float(crop_values[w])))  # fmt: skip
    result.counts = {
        "boxes1": sheet.boxes1,
        "boxes2": len(sheet.boxes) - sheet.boxes1,
        "candidates": len(sheet.boxes),
        "degenerate": int((~valid[sheet.window_of]).sum()),
        "unique_windows": int(valid.sum()),
        "after_crop_pair_gate": int(per_candidate[0].sum()),
        "after_itm_image1": int(per_candidate[1].sum()),
        "after_itm_image2": int(per_candidate[2].sum()),
        "kept": len(result.kept),
        "identical_windows": int((valid & sheet.window_identical).sum()),
    }
    result.band = _band_record(tally)
    return Decision(result, tally.needs)


def _pair_value(sheet: ScoreSheet, p: PairSimilarityArgs, band: BandSpec, tally: _Tally) -> float:
    if sheet.pair_identical:
        return 1.0
    margin = band.margin("pair_similarity")
    value, in_band, missing = _banded_values(sheet.pair, p.min_score_1, p.max_score_1, margin)
    if margin is not None:
        tally.add("pair_similarity", 1, int(in_band))
        if missing:
            tally.needs.append(Need("pair_similarity"))
    return float(value)


def _band_record(tally: _Tally) -> dict[str, dict[str, int]] | None:
    """PairResult.band as the gated run writes it: the scores in SCORES order, None when none was banded."""
    if not tally.band:
        return None
    return {s: {"scored": tally.band[s][0], "rescored": tally.band[s][1]} for s in SCORES if s in tally.band}
