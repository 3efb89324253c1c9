"""The guard band's margins (imgdiff_onnx.engine.band), measured on the calibration images.

Each decision score is computed by the runtime's own code on the folder just written, once with
the fp32 graphs and once with the int8 graphs, on inputs like the operator's: near-identical
image pairs (a photo and the same photo with a patch of another pasted in, or with its
brightness shifted) and unrelated pairs for the image-pair similarity; the two crops of windows
of those pairs for the crop-pair similarity; crops against a few words for the ITM probability.
A score's margin is `band.SAFETY` times the largest |int8 - fp32| seen.

The export measures them; for a folder written before the export did (or to measure again on
other images), without PyTorch:

    python -m imgdiff_onnx_export.band --models DIR [--calibration-images DIR]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from imgdiff_onnx.engine import manifest as mf
from imgdiff_onnx.engine.band import SAFETY, GuardBand, Margin
from imgdiff_onnx.errors import ImgDiffError
from imgdiff_onnx.engine.models.clip import cosine
from imgdiff_onnx.engine.modelset import ModelSet, SessionPool, SessionSettings
from imgdiff_onnx.engine.stages.crops import Crops, Window, identical

log = logging.getLogger(__name__)

WORDS = ("plane", "boat", "traffic light", "dog", "sky", "person", "car", "building")

WINDOWS_PER_PAIR = 8
ITM_CROPS = 48  # BLIP's vision graph is the costly one: at most this many crops, each against every word


def edited_pairs(images: list[np.ndarray], seed: int = 0) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[Window]]:
    """Near-identical pairs (pasted patch, brightness shift) and unrelated pairs of the images,
    and crop windows on the near-identical pairs (the pasted patch and random ones)."""
    rng = np.random.default_rng(seed)
    pairs, windows = [], []
    for i, image in enumerate(images):
        h, w = image.shape[:2]
        other = images[(i + 1) % len(images)]
        ph, pw = int(rng.integers(max(4, h // 8), max(5, h // 3))), int(rng.integers(max(4, w // 8), max(5, w // 3)))
        y, x = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
        pasted = image.copy()
        patch = other[: min(ph, other.shape[0]), : min(pw, other.shape[1])]
        pasted[y : y + patch.shape[0], x : x + patch.shape[1]] = patch
        brighter = np.clip(image.astype(np.int16) + 12, 0, 255).astype(np.uint8)
        for edited in (pasted, brighter):
            pairs.append((image, edited))
            wins = [(y, y + ph, x, x + pw)]
            for _ in range(WINDOWS_PER_PAIR - 1):
                ch, cw = int(rng.integers(max(4, h // 10), h // 2 + 1)), int(rng.integers(max(4, w // 10), w // 2 + 1))
                r, c = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
                wins.append((r, r + ch, c, c + cw))
            windows.append(wins)
        pairs.append((image, other))
        windows.append([])
    return pairs, windows  # type: ignore[return-value]


def measure(folder: Path, images: list[np.ndarray], measured_on: str, by: str = "export", safety: float = SAFETY) -> GuardBand:
    """The three margins of the folder's int8 CLIP and BLIP against its fp32 ones."""
    pool = SessionPool()
    settings = SessionSettings()
    scores: dict[str, dict[str, list[float]]] = {"fp32": {}, "int8": {}}
    pairs, windows = edited_pairs(images)
    crop_pairs = [(a, b, win) for (a, b), wins in zip(pairs, windows) for win in wins if not identical(a, b, win)]
    crops = [a[r0:r1, c0:c1] for a, _, (r0, r1, c0, c1) in crop_pairs][:ITM_CROPS]
    for precision in ("fp32", "int8"):
        clip, blip = ModelSet(folder, precision, pool=pool).scorers(settings, crop_batch_size=8)
        whole = clip.embed([im for pair in pairs for im in pair])
        got = scores[precision]
        got["pair_similarity"] = list(cosine(whole[0::2], whole[1::2]))
        a = clip.embed(Crops([(x, win) for x, _, win in crop_pairs]))
        b = clip.embed(Crops([(y, win) for _, y, win in crop_pairs]))
        got["crop_similarity"] = list(cosine(a, b))
        embeds = blip.encode_images(crops)
        got["itm_probability"] = [float(p) for word in WORDS for p in blip.score(embeds, word)]
    what = f"{measured_on}: {len(pairs)} image pairs, {len(crop_pairs)} crop pairs, {len(crops)} crops x {len(WORDS)} words"
    margins = {
        score: Margin.from_errors(np.subtract(scores["int8"][score], scores["fp32"][score]), what, by, safety)
        for score in scores["fp32"]
    }
    band = GuardBand(**margins)
    for score, m in band.to_json().items():
        log.info("guard band %s: margin %.4g (largest int8 error %.4g over %d scores)", score, m["margin"], m["max_error"], m["samples"])
    return band


def main(argv: list[str] | None = None) -> int:
    from .images import calibration_set

    parser = argparse.ArgumentParser(prog="python -m imgdiff_onnx_export.band", description="Measure a model folder's guard band and write it into its manifest.")
    parser.add_argument("--models", type=Path, required=True, help="a model folder with fp32 and int8 graphs")
    parser.add_argument("--calibration-images", type=Path, help="folder of images like your data (default: as the export)")
    parser.add_argument("--quiet", action="store_true", help="warnings and errors only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        manifest = mf.read(args.models)
        images = calibration_set(args.calibration_images)
        band = measure(args.models, images.images, images.describe())
        mf.write(args.models, manifest.with_guard_band(band))
    except ImgDiffError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
