"""A pair's data: what goes in (PairInput), what comes out (PairResult with per-box evidence, or
PairFailure), and the record-level error (PairError)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ParameterError, RecordErrorBase
from .imageio import ImageBytes

ImageSource = str | Path | ImageBytes | np.ndarray
EMPTY_BOXES = np.zeros((0, 4), dtype=np.float32)


@dataclass(frozen=True)
class PairInput:
    """One record. Images are paths, encoded bytes (ImageBytes: a Parquet cell, a tar member) or
    uint8 arrays (RGB, grey or RGBA).

    objects1/objects2, when given, replace the caption step (captions may then be None).
    """

    image1: ImageSource
    image2: ImageSource
    caption1: str | None = None
    caption2: str | None = None
    objects1: tuple[str, ...] | None = None
    objects2: tuple[str, ...] | None = None
    key: str = ""


class PairError(RecordErrorBase):
    """A record cannot be processed (bad image, missing caption, same path twice...)."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key
        self.message = message


@dataclass(frozen=True)
class BoxEvidence:
    """Why a kept box passed: its candidate, the image FastSAM found it in, the word each crop
    matched (the first word in the objects list that passed, as the original stops there) with
    its ITM probability, and the CLIP similarity of the two crops."""

    candidate: int  # index into PairResult.candidate_boxes
    source: int  # 1: found by FastSAM in image 1, 2: in image 2
    word1: str
    itm1: float
    word2: str
    itm2: float
    crop_similarity: float

    def to_dict(self, digits: int = 4) -> dict[str, Any]:
        return {
            "candidate": self.candidate,
            "source": self.source,
            "word1": self.word1,
            "itm1": round(self.itm1, digits),
            "word2": self.word2,
            "itm2": round(self.itm2, digits),
            "crop_similarity": round(self.crop_similarity, digits),
        }


def _optional_array_equal(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    if a is None or b is None:
        return a is b
    return a.shape == b.shape and bool(np.array_equal(a, b))


@dataclass(eq=False)
class PairResult:
    """The boxes of one pair and how they were found.

    boxes: float32 (K, 4), centre xywh in image-1 pixels; evidence[k] says why boxes[k] passed.
    `to_dict()`/`to_json()` give what a results line holds, `plot()` draws the boxes, `==`
    compares everything but the timings.
    """

    key: str
    boxes: np.ndarray
    objects1: list[str]
    objects2: list[str]
    pair_similarity: float | None
    exit_reason: str | None  # why the pair stopped early, None if it went through every stage
    counts: dict[str, int] = field(default_factory=dict)
    times: dict[str, float] = field(default_factory=dict)
    candidate_boxes: np.ndarray | None = None  # S4 candidates (image-1 boxes then image-2 boxes)
    survivors: list[int] = field(default_factory=list)  # candidate ids passing S5 and S6
    kept: list[int] = field(default_factory=list)  # candidate ids kept by S7
    evidence: list[BoxEvidence] = field(default_factory=list)  # one per box
    image_paths: tuple[str, str] | None = None  # where the images came from, when they were files
    # with EngineSettings(diagnostics=True): every score a gate computed, keyed by crop window
    # (rows r0, r1, columns c0, c1): "crop_pair" {window: cosine}, "itm_image1"/"itm_image2"
    # {(window, word): probability}. Empty otherwise.
    diagnostics: dict[str, dict] = field(default_factory=dict)
    # for banded models (imgdiff_onnx.engine.band): per score, how many were computed and how many of
    # them fell in the guard band and were scored again in fp32: {score: {"scored", "rescored"}}.
    # How the pair ran, like `times`: not compared by ==.
    band: dict[str, dict[str, int]] | None = None
    # with EngineSettings(keep_scores=True): every score the decisions depend on, for `retune`
    # and `sweep` (imgdiff_onnx.tuning); not compared by ==
    scores: "ScoreSheet | None" = None

    def __repr__(self) -> str:
        stopped = f", exit_reason={self.exit_reason!r}" if self.exit_reason else ""
        similarity = "None" if self.pair_similarity is None else f"{self.pair_similarity:.4f}"
        candidates = self.counts.get("candidates", 0)
        return (f"PairResult(key={self.key!r}, boxes={len(self.boxes)} of {candidates} candidates, objects1={self.objects1}, "
                f"objects2={self.objects2}, pair_similarity={similarity}{stopped})")  # fmt: skip

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PairResult):
            return NotImplemented
        return (
            self.key == other.key
            and _optional_array_equal(self.boxes, other.boxes)
            and self.objects1 == other.objects1
            and self.objects2 == other.objects2
            and self.pair_similarity == other.pair_similarity
            and self.exit_reason == other.exit_reason
            and self.counts == other.counts
            and _optional_array_equal(self.candidate_boxes, other.candidate_boxes)
            and self.survivors == other.survivors
            and self.kept == other.kept
            and self.evidence == other.evidence
        )

    __hash__ = None  # type: ignore[assignment]  # mutable

    def to_dict(self, digits: int = 4, timings: bool = False) -> dict[str, Any]:
        """JSON-ready: what a results line holds under "imgdiff" for an ok record (rounded)."""
        out: dict[str, Any] = {
            "status": "ok",
            "boxes": [[round(float(v), digits) for v in box] for box in np.asarray(self.boxes, dtype=np.float32)],
            "evidence": [e.to_dict(digits) for e in self.evidence],
            "objects1": list(self.objects1),
            "objects2": list(self.objects2),
            "pair_similarity": None if self.pair_similarity is None else round(self.pair_similarity, 6),
            "exit_reason": self.exit_reason,
            "counts": dict(self.counts),
        }
        if self.band is not None:
            out["band"] = {k: dict(v) for k, v in self.band.items()}
        if timings:
            out["times"] = {k: round(v, 4) for k, v in self.times.items()}
        return out

    def to_json(self, digits: int = 4, timings: bool = False) -> str:
        return json.dumps(self.to_dict(digits, timings), ensure_ascii=False)

    def plot(self, image1: np.ndarray | str | Path | None = None, image2: np.ndarray | str | Path | None = None, numbers: bool = True) -> np.ndarray:
        """The pair side by side with box k numbered and coloured the same on both images, as an
        RGB uint8 array. Images default to the files the pair was read from."""
        from .review.drawing import draw_pair
        from .imageio import from_array, load_image_file

        def rgb(image: np.ndarray | str | Path | None, which: int) -> np.ndarray:
            if image is None:
                if self.image_paths is None:
                    raise ParameterError(f"image{which}: the pair was given as arrays; pass image1 and image2 to plot()", f"image{which}")
                image = self.image_paths[which - 1]
            return from_array(image, f"image {which}").rgb if isinstance(image, np.ndarray) else load_image_file(image).rgb

        return draw_pair(rgb(image1, 1), rgb(image2, 2), self.boxes.tolist(), numbers=numbers)


@dataclass
class PairFailure:
    """What process_many yields for a record that failed; the run goes on."""

    key: str
    error: str


@dataclass
class ScoreSheet:
    """A pair's scores. Last axis of every score array: [as computed, fp32 re-score or NaN].

    windows are the distinct crop windows of the candidates, in first-seen candidate order;
    `window_of[k]` is candidate k's window. Scores of windows that crop nothing (D4) are NaN.
    """

    pair: np.ndarray  # (2,) whole-pair CLIP similarity
    pair_identical: bool  # the two images are the same pixels (similarity 1.0, CLIP not run)
    boxes: np.ndarray  # (C, 4) float32 candidate boxes, centre xywh: image-1 boxes, then image-2 boxes
    boxes1: int  # how many of the candidates FastSAM found in image 1
    window_of: np.ndarray  # (C,) int32
    window_valid: np.ndarray  # (W,) bool: crops at least one pixel from both images (D4)
    window_identical: np.ndarray  # (W,) bool: both crops are the same pixels (similarity 1.0, CLIP not run)
    crop: np.ndarray  # (W, 2) crop-pair CLIP similarity
    itm1: np.ndarray  # (W, n1, 2) ITM probability of crop 1 with each word of objects1
    itm2: np.ndarray  # (W, n2, 2) ITM probability of crop 2 with each word of objects2

    @classmethod
    def exited_early(cls, pair: tuple[float, float], pair_identical: bool, n1: int, n2: int) -> "ScoreSheet":
        """A pair with no candidates (FastSAM found nothing in either image)."""
        return cls(np.asarray(pair, dtype=np.float64), pair_identical, np.zeros((0, 4), np.float32), 0, np.zeros(0, np.int32),
                   np.zeros(0, bool), np.zeros(0, bool), np.zeros((0, 2)), np.zeros((0, n1, 2)), np.zeros((0, n2, 2)))  # fmt: skip
