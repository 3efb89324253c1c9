"""Image preprocessing in numpy / Pillow / OpenCV, matching the PyTorch side exactly.

- CLIP and BLIP: Hugging Face's PIL-backend image processors (CLIPImageProcessorPil,
  BlipImageProcessorPil): resize with Pillow on uint8 RGB, centre crop, rescale, normalise.
- FastSAM: Ultralytics' LetterBox as its predictor uses it for one image ("rect" minimal
  padding to a multiple of the stride, centred, pad value 114, OpenCV bilinear resize).

The constants come from the model folder's manifest (they travel with the model).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np
from PIL import Image

from ..errors import ModelFolderError

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass(frozen=True)
class ImageNormalization:
    """Resize / crop / scale / normalise settings of a Hugging Face image processor."""

    resize_shortest_edge: int | None  # CLIP: shortest side to this size, aspect kept
    resize_height: int | None  # BLIP: fixed size
    resize_width: int | None
    crop_height: int | None  # None: no centre crop
    crop_width: int | None
    resample: str
    rescale_factor: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_dict(cls, data: dict) -> "ImageNormalization":
        return cls(
            resize_shortest_edge=data.get("resize_shortest_edge"),
            resize_height=data.get("resize_height"),
            resize_width=data.get("resize_width"),
            crop_height=data.get("crop_height"),
            crop_width=data.get("crop_width"),
            resample=data["resample"],
            rescale_factor=float(data["rescale_factor"]),
            mean=tuple(float(x) for x in data["mean"]),
            std=tuple(float(x) for x in data["std"]),
        )

    @property
    def output_size(self) -> tuple[int, int]:
        if self.crop_height is not None and self.crop_width is not None:
            return self.crop_height, self.crop_width
        if self.resize_height is None or self.resize_width is None:
            raise ModelFolderError("the manifest's preprocessing has a shortest-edge resize without a centre crop: no fixed input size")
        return self.resize_height, self.resize_width


def _resize_size(height: int, width: int, norm: ImageNormalization) -> tuple[int, int]:
    """Output (height, width) of the resize step, as transformers' get_resize_output_image_size."""
    if norm.resize_shortest_edge is not None:
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = norm.resize_shortest_edge, int(norm.resize_shortest_edge * long / short)
        return (new_long, new_short) if width <= height else (new_short, new_long)
    assert norm.resize_height is not None and norm.resize_width is not None
    return norm.resize_height, norm.resize_width


def normalize_image(rgb: np.ndarray, norm: ImageNormalization, out: np.ndarray | None = None) -> np.ndarray:
    """One uint8 RGB (H, W, 3) image to float32 (3, h, w) model input, written into `out` when
    given (e.g. one image of a batch: no copy)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected a uint8 RGB image (H, W, 3), got {rgb.dtype} {rgb.shape}")  # internal: images come from imageio, which checks them
    height, width = rgb.shape[:2]
    if height == 0 or width == 0:
        raise ValueError(f"empty image {rgb.shape}")  # internal: imageio refuses empty images
    new_h, new_w = _resize_size(height, width, norm)
    image = rgb
    if (new_h, new_w) != (height, width):
        image = np.asarray(Image.fromarray(rgb).resize((new_w, new_h), resample=_RESAMPLE[norm.resample]))
    if norm.crop_height is not None and norm.crop_width is not None:
        image = _center_crop(image, norm.crop_height, norm.crop_width)
    tables = _value_tables(norm.rescale_factor, norm.mean, norm.std)
    if out is None:
        out = np.empty((3, *image.shape[:2]), dtype=np.float32)
    elif out.shape != (3, *image.shape[:2]) or out.dtype != np.float32:
        raise ValueError(f"out must be float32 {(3, *image.shape[:2])}, got {out.dtype} {out.shape}")  # internal: the caller allocates `out`
    for c in range(3):  # a lookup per channel: the same bits as the arithmetic, in one pass
        np.take(tables[c], image[:, :, c], out=out[c])
    return out


def rescale_and_normalize(image: np.ndarray, rescale_factor: float, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """uint8 (..., 3) pixels to float32 as the processors define it: x * rescale, minus the
    channel's mean, over its std, each step rounded to float32."""
    out = image.astype(np.float32) * np.float32(rescale_factor)
    return (out - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)


@lru_cache(maxsize=16)
def _value_tables(rescale_factor: float, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """(3, 256) float32: rescale_and_normalize of every uint8 value in each channel. Elementwise
    float32 operations round the same way whatever else is in the array, so looking a pixel up
    here gives exactly what the arithmetic gives on the whole image."""
    values = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
    return np.ascontiguousarray(rescale_and_normalize(values, rescale_factor, mean, std).T)


def _center_crop(image: np.ndarray, crop_h: int, crop_w: int) -> np.ndarray:
    """transformers' center_crop: pad with zeros when the image is smaller than the crop."""
    height, width = image.shape[:2]
    if height < crop_h or width < crop_w:
        top_pad, left_pad = max(0, (crop_h - height) // 2), max(0, (crop_w - width) // 2)
        padded = np.zeros((max(height, crop_h), max(width, crop_w), 3), dtype=image.dtype)
        padded[top_pad : top_pad + height, left_pad : left_pad + width] = image
        image, height, width = padded, padded.shape[0], padded.shape[1]
    top, left = int((height - crop_h) / 2), int((width - crop_w) / 2)
    return image[top : top + crop_h, left : left + crop_w]


def normalize_batch(images: list[np.ndarray], norm: ImageNormalization) -> np.ndarray:
    """Several uint8 RGB images to one float32 (N, 3, h, w) batch."""
    h, w = norm.output_size
    if not images:
        return np.zeros((0, 3, h, w), dtype=np.float32)
    batch = np.empty((len(images), 3, h, w), dtype=np.float32)
    for image, sample in zip(images, batch):
        normalize_image(image, norm, out=sample)
    return batch


@dataclass(frozen=True)
class LetterboxSettings:
    stride: int = 32
    pad_value: int = 114
    interpolation: str = "linear"  # OpenCV INTER_LINEAR

    @classmethod
    def from_dict(cls, data: dict) -> "LetterboxSettings":
        return cls(stride=int(data["stride"]), pad_value=int(data["pad_value"]), interpolation=str(data["interpolation"]))


@dataclass(frozen=True)
class Letterboxed:
    """A letterboxed network input and the geometry needed to map boxes back."""

    tensor: np.ndarray  # float32 (1, 3, H, W), RGB, 0..1
    original_shape: tuple[int, int]  # (height, width) of the source image


_CV2_INTERP = {"linear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST, "area": cv2.INTER_AREA, "cubic": cv2.INTER_CUBIC}


def letterbox(bgr: np.ndarray, imgsz: int, settings: LetterboxSettings) -> Letterboxed:
    """Ultralytics LetterBox(imgsz, auto=True, stride) for one image, then BGR->RGB, /255, NCHW."""
    if bgr.ndim != 3 or bgr.shape[2] != 3 or bgr.dtype != np.uint8:
        raise ValueError(f"expected a uint8 BGR image (H, W, 3), got {bgr.dtype} {bgr.shape}")  # internal: images come from imageio, which checks them
    height, width = bgr.shape[:2]
    r = min(imgsz / height, imgsz / width)
    new_w, new_h = max(round(width * r), 1), max(round(height * r), 1)
    dw, dh = (imgsz - new_w) % settings.stride, (imgsz - new_h) % settings.stride
    dw, dh = dw / 2, dh / 2
    image = bgr
    if (width, height) != (new_w, new_h):
        image = cv2.resize(bgr, (new_w, new_h), interpolation=_CV2_INTERP[settings.interpolation])
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    value = (settings.pad_value,) * 3
    image = cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=value)
    tensor = image[:, :, ::-1].transpose(2, 0, 1)[None].astype(np.float32) / np.float32(255.0)
    return Letterboxed(tensor=np.ascontiguousarray(tensor), original_shape=(height, width))
