"""The guard band: int8 scores decide where they cannot flip a decision, fp32 scores elsewhere.

An int8 graph's decision score (a CLIP cosine similarity, a BLIP ITM probability) differs from the
fp32 graph's by a small error. If that error is at most `margin`, an int8 score farther than
`margin` from every bound of its gate's interval lies on the same side of each bound as the fp32
score, so it decides as fp32 would. A score within `margin` of a bound (or not finite) is in the
band: the engine scores it again with the fp32 graphs and the fp32 score decides.

The margins are measured when the model folder is exported (the int8 chain against the fp32 chain
on the calibration images, times a safety factor) and kept in the manifest under `guard_band`;
`validate` measures them on your own pairs and `--write` widens them. The guarantee holds where
the int8 error stays within the margin, which is what those measurements test.

Scores: "pair_similarity" (S1, CLIP on the whole images), "crop_similarity" (S6, CLIP on the two
crops of a window), "itm_probability" (S5, BLIP on a crop and a word).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ModelFolderError

SCORES = ("pair_similarity", "crop_similarity", "itm_probability")
SCORE_MODEL = {"pair_similarity": "clip", "crop_similarity": "clip", "itm_probability": "blip"}
SAFETY = 2.0  # margin = SAFETY x the largest int8 error measured


def near(scores: np.ndarray | float, low: float, high: float, margin: float) -> np.ndarray:
    """True where a score is in the band of [low, high]: within `margin` of either bound
    (inclusive), or not a finite number (then only fp32 can say)."""
    s = np.asarray(scores, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return ~np.isfinite(s) | (np.abs(s - low) <= margin) | (np.abs(s - high) <= margin)


@dataclass(frozen=True)
class Margin:
    """One score's margin and how it was found: the largest |int8 - fp32| seen (`max_error`) over
    `samples` scores, `measured_on` what, by whom (`by`: "export" or "validate")."""

    margin: float
    max_error: float
    samples: int
    measured_on: str
    by: str

    def __post_init__(self) -> None:
        for name in ("margin", "max_error"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ModelFolderError(f"guard band {name} must be a finite number >= 0, got {value!r}")
        if self.margin < self.max_error:
            raise ModelFolderError(f"guard band margin {self.margin} is below the error it was measured from ({self.max_error})")

    @classmethod
    def from_errors(cls, errors: np.ndarray, measured_on: str, by: str, safety: float = SAFETY) -> "Margin":
        e = np.abs(np.asarray(errors, dtype=np.float64))
        if e.size == 0 or not np.isfinite(e).all():
            raise ModelFolderError(f"guard band: no finite int8 errors to measure a margin from ({measured_on})")
        worst = float(e.max())
        return cls(margin=worst * safety, max_error=worst, samples=int(e.size), measured_on=measured_on, by=by)

    def to_json(self) -> dict[str, Any]:
        return {"margin": self.margin, "max_error": self.max_error, "samples": self.samples, "measured_on": self.measured_on, "by": self.by}


@dataclass(frozen=True)
class GuardBand:
    """The margin of each score (manifest `guard_band`)."""

    pair_similarity: Margin
    crop_similarity: Margin
    itm_probability: Margin

    def margin(self, score: str) -> float:
        return getattr(self, score).margin

    @classmethod
    def from_json(cls, data: Any, where: str) -> "GuardBand":
        if not isinstance(data, Mapping):
            raise ModelFolderError(f"{where}: expected an object, got {type(data).__name__}")
        margins = {}
        for score in SCORES:
            entry = data.get(score)
            if not isinstance(entry, Mapping):
                raise ModelFolderError(f"{where}: no {score!r} margin")
            try:
                margins[score] = Margin(
                    margin=entry["margin"],
                    max_error=entry["max_error"],
                    samples=int(entry.get("samples", 0)),
                    measured_on=str(entry.get("measured_on", "")),
                    by=str(entry.get("by", "")),
                )
            except KeyError as exc:
                raise ModelFolderError(f"{where}.{score}: no {exc.args[0]!r}") from None
            except ModelFolderError as exc:
                raise ModelFolderError(f"{where}.{score}: {exc}") from None
        return cls(**margins)

    def to_json(self) -> dict[str, Any]:
        return {score: getattr(self, score).to_json() for score in SCORES}

    def to_margins(self) -> dict[str, float]:
        """{score: margin}."""
        return {score: self.margin(score) for score in SCORES}

    def widened(self, observed: Mapping[str, Margin]) -> tuple["GuardBand", list[str]]:
        """This band with each margin raised to an observed one where that is wider; and which."""
        new, changed = {}, []
        for score in SCORES:
            mine, seen = getattr(self, score), observed.get(score)
            if seen is not None and seen.margin > mine.margin:
                new[score], changed = seen, changed + [score]
            else:
                new[score] = mine
        return GuardBand(**new), changed


@dataclass
class BandTally:
    """Scores computed and scores re-scored in fp32, per score (a pair's, a run's)."""

    scored: dict[str, int]
    rescored: dict[str, int]

    @classmethod
    def empty(cls) -> "BandTally":
        return cls({}, {})

    def add(self, score: str, scored: int, rescored: int) -> None:
        self.scored[score] = self.scored.get(score, 0) + scored
        self.rescored[score] = self.rescored.get(score, 0) + rescored

    def merge(self, record: Mapping[str, Mapping[str, int]]) -> None:
        """Add a results line's `band` record ({score: {"scored", "rescored"}})."""
        for score, counts in record.items():
            self.add(score, int(counts.get("scored", 0)), int(counts.get("rescored", 0)))

    def to_json(self) -> dict[str, dict[str, int]]:
        return {s: {"scored": self.scored[s], "rescored": self.rescored.get(s, 0)} for s in SCORES if s in self.scored}

    def describe(self) -> str:
        parts = []
        for score in SCORES:
            n = self.scored.get(score, 0)
            if n:
                k = self.rescored.get(score, 0)
                parts.append(f"{score} {k}/{n} ({k / n:.1%})")
        return ", ".join(parts) or "no scores"
