"""The fp32 scores a retune needs and the run did not compute: a banded model's scores within the
guard band of a new threshold. Computed as the engine computes them (imgdiff_onnx.engine.pipeline):
the same image loading, image 2 resized to image 1 (D1), the same crop windows and crops (JPEG
round trip when the run had it), the fp32 CLIP and BLIP graphs of the run's model folder.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from ..errors import ModelFolderError, RunError
from ..imageio import ImageLoadError, load_image
from ..engine.modelset import ModelSet, SessionSettings
from ..engine.models.blip import BlipMatcher
from ..engine.models.clip import ClipImageEncoder, cosine
from ..runs.runfile import models_digest
from ..settings import EngineSettings, available_cores
from ..engine.stages.crops import Crops, crop_window
from ..engine.decide import Need
from ..pairs import ScoreSheet
from ..runs.scores import KeptScoresMeta
from ..runs.shards import ShardError

log = logging.getLogger(__name__)

PairImages = Callable[[dict], tuple[object, object]]  # a results line's fields -> its two images (paths or ImageBytes)


class Rescorer:
    """fp32 CLIP and BLIP of a model folder, filling a sheet's missing fp32 scores."""

    def __init__(self, clip: ClipImageEncoder, blip: BlipMatcher, jpeg_roundtrip: bool, images: PairImages | None = None):
        self.clip, self.blip, self.jpeg = clip, blip, jpeg_roundtrip
        self.read_pair = images or resolved_paths  # where a results line's images are read again
        self.rescored = 0  # scores computed
        self._images: tuple[object, np.ndarray, np.ndarray, np.ndarray] | None = None  # (line, image 1, image 2, image 2 in image 1's frame)

    @classmethod
    def for_run(cls, meta: KeptScoresMeta, models: Path | None = None, images: PairImages | None = None) -> "Rescorer":
        """The fp32 graphs of `models` (default: the folder the run used), which must hold the
        graphs the run used."""
        folder = Path(models) if models is not None else Path(meta.models)
        try:
            model_set = ModelSet(folder, "fp32")
        except (OSError, ModelFolderError) as exc:
            raise RunError(f"retune needs fp32 scores near the new thresholds, computed with the run's model folder {folder}: {exc}; "
                           "pass --models to name where it is now") from None  # fmt: skip
        if models_digest(model_set.manifest) != meta.models_digest:
            raise RunError(f"{folder} holds other graphs than the run that kept the scores used; pass --models with that folder")
        log.info("scores within the guard band of the new thresholds: computing them in fp32 with %s", folder)
        clip, blip = model_set.scorers(SessionSettings(threads=available_cores()), crop_batch_size=EngineSettings().crop_batch_size)
        return cls(clip, blip, meta.jpeg_roundtrip, images)

    def fill(self, fields: dict, sheet: ScoreSheet, needs: list[Need]) -> None:
        """Compute `needs` for the pair of results line `fields` and write them into the sheet's
        fp32 column."""
        rgb1, rgb2, resized = self._pair_images(fields)
        if any(n.score == "pair_similarity" for n in needs):
            sheet.pair[1] = float(cosine(*np.split(self.clip.embed([rgb1, rgb2]), 2))[0])
        windows = list(dict.fromkeys(crop_window(b) for b in sheet.boxes))
        crops = [n.window for n in needs if n.score == "crop_similarity"]
        if crops:
            feats = self.clip.embed(Crops([(rgb1, windows[k]) for k in crops] + [(resized, windows[k]) for k in crops], self.jpeg))  # type: ignore[index]
            sheet.crop[crops, 1] = cosine(feats[: len(crops)], feats[len(crops) :])
        for side, image, words in ((1, rgb1, fields["objects1"]), (2, resized, fields["objects2"])):
            itm = [n for n in needs if n.score == "itm_probability" and n.side == side]
            if not itm:
                continue
            scores = sheet.itm1 if side == 1 else sheet.itm2
            order = sorted({n.window for n in itm})  # type: ignore[type-var]
            row = {win: r for r, win in enumerate(order)}
            embeds = self.blip.encode_images(Crops([(image, windows[k]) for k in order], self.jpeg))  # type: ignore[index]
            for n in itm:
                probability = self.blip.score(embeds, words[n.word], [row[n.window]])[0]
                same_word = [j for j, word in enumerate(words) if word == words[n.word]]
                scores[n.window, same_word, 1] = probability
        self.rescored += len(needs)


    def _pair_images(self, fields: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The pair's images, read once for all the rounds of one line (retune re-scores in rounds)."""
        where = (fields.get("line"), repr(fields.get("source")))  # a line of a file, or a row of a shard
        if self._images is None or self._images[0] != where:
            rgb1, rgb2 = _load(fields, self.read_pair)
            h, w = rgb1.shape[:2]
            resized = rgb2 if rgb2.shape[:2] == (h, w) else cv2.resize(rgb2, (w, h), interpolation=cv2.INTER_LINEAR)
            self._images = (where, rgb1, rgb2, resized)
        return self._images[1], self._images[2], self._images[3]


def resolved_paths(fields: dict) -> tuple[object, object]:
    """The images of a JSON Lines run's results line: the paths it resolved."""
    return fields.get("image_path1_resolved"), fields.get("image_path2_resolved")


def _load(fields: dict, images: PairImages) -> tuple[np.ndarray, np.ndarray]:
    try:
        sources = images(fields)
    except ShardError as exc:
        raise RunError(f"line {fields.get('line')}: its images cannot be read again for the fp32 re-score a new threshold needs: {exc}") from None
    out = []
    for which, source in zip((1, 2), sources):
        try:
            out.append(load_image(source, f"image {which}").rgb)
        except ImageLoadError as exc:
            name = source if isinstance(source, (str, Path)) else getattr(source, "name", "")
            raise RunError(f"line {fields.get('line')}: image {which} ({name}) cannot be read for the fp32 re-score a new threshold needs: {exc}") from None
    return out[0], out[1]
