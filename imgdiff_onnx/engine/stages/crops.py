"""S4: crop windows of candidate boxes, crops, and the D2 JPEG round trip (DESIGN.md)."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from typing import overload

import cv2
import numpy as np
from PIL import Image

Window = tuple[int, int, int, int]  # rows r0:r1, columns c0:c1


def crop_window(box_xywh: np.ndarray) -> Window:
    """S4: rows int(cy - h/2) : int(cy + h/2), columns int(cx - w/2) : int(cx + w/2), float32 math."""
    cx, cy, w, h = (np.float32(v) for v in box_xywh)
    two = np.float32(2)
    return int(cy - h / two), int(cy + h / two), int(cx - w / two), int(cx + w / two)


def crop(image: np.ndarray, window: Window) -> np.ndarray:
    """The window's pixels with Python slice semantics (negative starts wrap), as the original."""
    r0, r1, c0, c1 = window
    return image[r0:r1, c0:c1]


def nonempty(window: Window, *images: np.ndarray) -> bool:
    """D4: the window crops at least one pixel from every image."""
    return all(crop(image, window).size > 0 for image in images)


def jpeg_roundtrip(rgb: np.ndarray) -> np.ndarray:
    """D2 compatibility: OpenCV JPEG (quality 95) then PIL decode to RGB, as Data-Juicer's cache."""
    ok, data = cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 95])
    if not ok:
        raise ValueError("JPEG encoding failed")  # internal: OpenCV failed on a uint8 crop (a record error upstream)
    with Image.open(io.BytesIO(data.tobytes())) as image:
        return np.asarray(image.convert("RGB"))


class Crops(Sequence[np.ndarray]):
    """The crops of (image, window) items, cut (and JPEG round-tripped, D2) when read. A gate
    hands them to a model, which reads them chunk by chunk, so only one chunk's crops exist at
    a time: a window of a large photo is megabytes, and a gate step has up to 64 of them."""

    def __init__(self, items: Sequence[tuple[np.ndarray, Window]], jpeg: bool = False):
        self._items = list(items)
        self._jpeg = jpeg

    def __len__(self) -> int:
        return len(self._items)

    @overload
    def __getitem__(self, index: int) -> np.ndarray: ...
    @overload
    def __getitem__(self, index: slice) -> list[np.ndarray]: ...
    def __getitem__(self, index: int | slice) -> np.ndarray | list[np.ndarray]:
        if isinstance(index, slice):
            return [self._cut(image, window) for image, window in self._items[index]]
        image, window = self._items[index]
        return self._cut(image, window)

    def _cut(self, image: np.ndarray, window: Window) -> np.ndarray:
        pixels = np.ascontiguousarray(crop(image, window))
        return jpeg_roundtrip(pixels) if self._jpeg else pixels


def identical(image1: np.ndarray, image2: np.ndarray, window: Window) -> bool:
    """The window crops the same pixels from both images (then CLIP similarity is 1 by definition)."""
    return bool(np.array_equal(crop(image1, window), crop(image2, window)))


def pixel_key(image: np.ndarray, window: Window) -> bytes:
    """A digest of the window's pixels and shape: equal crops have equal keys (BLAKE2b, 256 bits)."""
    pixels = crop(image, window)
    digest = hashlib.blake2b(repr(pixels.shape).encode(), digest_size=32)
    digest.update(np.ascontiguousarray(pixels).data)
    return digest.digest()


def distinct(items: Sequence[tuple[np.ndarray, Window]]) -> tuple[list[int], np.ndarray]:
    """Which items to score so that the same pixels are scored once: (the first item of each
    distinct crop, in order; for every item, the row of its crop among those)."""
    rows: dict[bytes, int] = {}
    first: list[int] = []
    inverse = np.empty(len(items), dtype=np.intp)
    for k, (image, window) in enumerate(items):
        key = pixel_key(image, window)
        if key not in rows:
            rows[key] = len(first)
            first.append(k)
        inverse[k] = rows[key]
    return first, inverse
