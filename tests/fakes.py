"""A stand-in engine for tests of the run layer without models: it reads each pair's images as the
engine does (files, bytes or arrays, by imageio's rules) and answers from their pixels, so that what
a run passes to the engine, and what it writes back, can be checked in milliseconds."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from imgdiff_onnx.engine.stages.objects import pair_objects
from imgdiff_onnx.imageio import ImageLoadError, load_image
from imgdiff_onnx.pairs import EMPTY_BOXES, PairError, PairFailure, PairResult
from imgdiff_onnx.params import OperatorParams
from imgdiff_onnx.settings import EngineSettings


@dataclass
class FakeManifest:
    guard_band = None  # no margins measured: nothing is banded

    def files_json(self) -> dict:
        return {"fake.onnx": {"size": 1, "sha256": "0" * 64}}


@dataclass
class FakeModels:
    manifest: FakeManifest = field(default_factory=FakeManifest)
    precision: str = "fp32"


class FakeEngine:
    """Every pair comes back with its object words and no boxes; with `read_images`, its captions
    and object lists are checked and its images decoded as the engine does (a bad one is the
    pair's error), and the pair similarity is the mean of image 1's
    pixels over 255, and one box spans image 1. A pair whose objects1 holds "boom" raises an
    unforeseen error (as a bug would) in the middle of its batch."""

    def __init__(self, read_images: bool = False) -> None:
        self.models, self.params, self.settings = FakeModels(), OperatorParams(), EngineSettings()
        self.read_images = read_images
        self.pairs_seen = 0

    def process_many(self, pairs, pairs_per_batch: int = 4):
        pairs = list(pairs)
        if any(p.objects1 and "boom" in p.objects1 for p in pairs):
            raise ZeroDivisionError("a bug on one record")
        for p in pairs:
            self.pairs_seen += 1
            objects = (list(p.objects1 or []), list(p.objects2 or []))
            if not self.read_images:
                yield PairResult(p.key, EMPTY_BOXES, *objects, 0.5, None)
                continue
            try:
                objects = pair_objects(p)[:2]
                rgb1, rgb2 = load_image(p.image1).rgb, load_image(p.image2).rgb
            except PairError as exc:
                yield PairFailure(p.key, exc.message)
                continue
            except ImageLoadError as exc:
                yield PairFailure(p.key, str(exc))
                continue
            h, w = rgb1.shape[:2]
            box = np.array([[w / 2, h / 2, w, h]], dtype=np.float32)
            yield PairResult(p.key, box, *objects, round(float(rgb1.mean()) / 255 + float(rgb2.mean()) / 1e6, 6), None)
