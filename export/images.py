"""Images for int8 calibration and export verification.

Default: natural photographs, because a graph's agreement with PyTorch depends on the inputs'
statistics. Random-weight FastSAM networks in particular are chaotic on flat synthetic scenes
(near-equal scores everywhere, so tiny arithmetic differences reorder NMS), while on photographs
their fp32 graphs reproduce PyTorch box for box. The photographs are the ones scikit-image ships
inside its wheel (public-domain or CC0 test images; read as files, skimage is not imported), so an
offline machine has them. `--calibration-images DIR` replaces them with the user's own images,
which is what a user should pass when verification or int8 quality matters for their data.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgdiff_onnx import samples
from imgdiff_onnx.errors import ExportError
from imgdiff_onnx.imageio import load_image_file

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
# scikit-image's bundled colour and grey photographs of everyday scenes (skimage/data/*)
NATURAL_FILES = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "camera.png",
    "coins.png",
    "hubble_deep_field.jpg",
)


class CalibrationImagesError(ExportError):
    """The calibration/verification images cannot be read."""


@dataclass(frozen=True)
class ImageSet:
    images: list[np.ndarray]  # RGB uint8
    names: list[str]
    origin: str  # what they are, for the manifest and for error messages

    def describe(self) -> str:
        return f"{self.origin}: {', '.join(self.names)}"


def _skimage_data_folder() -> Path | None:
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "data"
    return folder if folder.is_dir() else None


def natural_images() -> ImageSet | None:
    """scikit-image's bundled photographs, or None when scikit-image is not installed."""
    folder = _skimage_data_folder()
    if folder is None:
        return None
    paths = [folder / name for name in NATURAL_FILES if (folder / name).is_file()]
    if len(paths) < 4:
        return None
    return ImageSet([load_image_file(p).rgb for p in paths], [p.name for p in paths], f"natural photographs shipped with scikit-image ({folder})")


def folder_images(folder: Path) -> ImageSet:
    if not Path(folder).is_dir():
        raise CalibrationImagesError(f"--calibration-images {folder}: not a folder")
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise CalibrationImagesError(f"--calibration-images {folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    images = []
    for p in paths:
        try:
            images.append(load_image_file(p).rgb)
        except Exception as exc:  # noqa: BLE001 - name the file, whatever the decoder said
            raise CalibrationImagesError(f"--calibration-images: cannot read {p} ({exc})") from None
    return ImageSet(images, [p.name for p in paths], f"{len(paths)} images from {folder}")


def generated_images(count: int = 8) -> ImageSet:
    return ImageSet(samples.calibration_images(count), [f"generated-{i}" for i in range(count)], "generated shapes (imgdiff_onnx.samples)")


def calibration_set(folder: Path | None) -> ImageSet:
    """The user's folder, else natural photographs, else (scikit-image missing) generated shapes."""
    if folder is not None:
        return folder_images(folder)
    natural = natural_images()
    if natural is not None:
        return natural
    log.warning(
        "scikit-image is not installed, so no natural photographs are at hand: calibrating and verifying on generated "
        "shapes, which random-weight FastSAM handles chaotically. Install the export extra or pass --calibration-images DIR."
    )
    return generated_images()
