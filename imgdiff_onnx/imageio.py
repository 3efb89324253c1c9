"""Reading images once, the same way for every stage.

One decode per image (Pillow), EXIF orientation applied, every mode turned into 8-bit RGB by
documented rules. CLIP, BLIP and the crops use the RGB array; FastSAM gets its BGR view. The
original decodes twice (PIL for the filters, OpenCV for segmentation and crops), which
disagree on EXIF-rotated and transparent images; here all stages see the same pixels.

Mode rules:
- RGB: as is. L (grey), CMYK, YCbCr, LAB, HSV: Pillow's convert("RGB").
- Transparency (RGBA, LA, PA, P with a transparent colour): composited onto white, as the
  Hugging Face image processors' convert_to_rgb does.
- 16-bit and 32-bit integer greys (I;16, I): the high byte (value >> 8, clipped), as OpenCV
  and Ultralytics read 16-bit images; float greys (F): clipped to 0..255.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import RecordErrorBase

# Larger images are refused with a clear error (Pillow's decompression-bomb guard is raised
# to this limit; it can be changed with IMGDIFF_MAX_IMAGE_PIXELS).
MAX_IMAGE_PIXELS = int(os.environ.get("IMGDIFF_MAX_IMAGE_PIXELS", 100_000_000))


class ImageLoadError(RecordErrorBase):
    """An image file is missing, unreadable, truncated or not an image."""


@dataclass(frozen=True)
class LoadedImage:
    rgb: np.ndarray  # uint8 (H, W, 3)
    source: str

    @property
    def bgr(self) -> np.ndarray:
        return np.ascontiguousarray(self.rgb[:, :, ::-1])

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.rgb.shape[0]), int(self.rgb.shape[1])


def to_rgb(image: Image.Image) -> np.ndarray:
    """A Pillow image of any mode to uint8 RGB, by the module's rules."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        data = np.asarray(image, dtype=np.int64)
        grey = np.clip(data >> 8, 0, 255).astype(np.uint8) if mode != "I" or data.max() > 255 else data.clip(0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "F":
        grey = np.clip(np.asarray(image, dtype=np.float32), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    if mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image)


@dataclass(frozen=True)
class ImageBytes:
    """An encoded image held in memory (a Parquet cell, a tar member): decoded by the same rules
    as a file. `name` says where it came from, in error messages and reports."""

    data: bytes
    name: str

    def __repr__(self) -> str:  # never the bytes themselves
        return f"ImageBytes({self.name!r}, {len(self.data):,} bytes)"


def load_image_file(path: str | Path) -> LoadedImage:
    path = Path(path)
    try:
        if not path.exists():
            raise ImageLoadError(f"image not found: {path}")
        if not path.is_file():
            raise ImageLoadError(f"not a file: {path}")
    except OSError as exc:  # e.g. a file name longer than the file system allows
        raise ImageLoadError(f"cannot look up {path} ({exc.strerror or exc})") from None
    return _decode(path, str(path))


def load_image_bytes(image: ImageBytes) -> LoadedImage:
    """The same image as `load_image_file` gives for a file holding these bytes."""
    if not image.data:
        raise ImageLoadError(f"empty image bytes: {image.name}")
    return _decode(io.BytesIO(image.data), image.name)


def _decode(source: Path | io.BytesIO, name: str) -> LoadedImage:
    """One decode by the module's rules (size limit, EXIF orientation, modes), every failure an ImageLoadError."""
    previous = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                if image.width * image.height > MAX_IMAGE_PIXELS:
                    raise ImageLoadError(f"image too large: {name} is {image.width}x{image.height} (limit {MAX_IMAGE_PIXELS} pixels)")
                image.load()
                image = ImageOps.exif_transpose(image)
                rgb = to_rgb(image)
    except ImageLoadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageLoadError(f"image too large: {name} ({exc})") from None
    except UnidentifiedImageError:
        raise ImageLoadError(f"not an image (or an unsupported format): {name}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageLoadError(f"unreadable or truncated image: {name} ({exc})") from None
    except Exception as exc:  # a decoder plugin's own failure must not end a batch run
        raise ImageLoadError(f"could not decode image: {name} ({type(exc).__name__}: {exc})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = previous
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ImageLoadError(f"empty image: {name}")
    return LoadedImage(rgb=np.ascontiguousarray(rgb), source=name)


def from_array(array: np.ndarray, name: str = "<array>") -> LoadedImage:
    """An image given as an array: uint8 RGB (H, W, 3), grey (H, W) or RGBA (H, W, 4)."""
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise ImageLoadError(f"{name}: arrays must be uint8, got {array.dtype}")
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    elif array.ndim == 3 and array.shape[2] == 4:
        array = to_rgb(Image.fromarray(array, mode="RGBA"))
    elif not (array.ndim == 3 and array.shape[2] == 3):
        raise ImageLoadError(f"{name}: expected an RGB array (H, W, 3), got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageLoadError(f"{name}: empty image {array.shape}")
    return LoadedImage(rgb=np.ascontiguousarray(array), source=name)


def load_image(source: object, which: str = "image") -> LoadedImage:
    """An image given as a path, ImageBytes or an array, by this module's rules."""
    if isinstance(source, np.ndarray):
        return from_array(source, f"{which} array")
    if isinstance(source, ImageBytes):
        return load_image_bytes(source)
    if not isinstance(source, (str, Path)) or str(source) == "":
        raise ImageLoadError(f"{which}: expected a path, image bytes or an array, got {type(source).__name__}")
    return load_image_file(source)


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Do two paths name one file: the same path after resolving links, or the same device and
    inode (a hard link)? A path that does not exist is no other file."""
    try:
        return os.path.realpath(a) == os.path.realpath(b) or os.path.samefile(a, b)
    except (OSError, ValueError):  # a path that does not exist, or holds a NUL
        return False
