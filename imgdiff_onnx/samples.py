"""Generated sample images: calibration data for the export step and pairs for the demo.

Everything here is deterministic in the seed, needs only numpy and OpenCV, and reads no files,
so a fresh offline machine can calibrate, verify and demo without any dataset.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

_SHAPES = ("circle", "rectangle", "triangle", "ellipse")


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth two-colour gradient with mild noise, as uint8 RGB."""
    top = rng.integers(0, 256, size=3).astype(np.float32)
    bottom = rng.integers(0, 256, size=3).astype(np.float32)
    t = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    image = (1.0 - t) * top + t * bottom
    image = np.broadcast_to(image, (height, width, 3)).copy()
    image += rng.normal(0.0, 6.0, size=image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def _draw_shape(image: np.ndarray, rng: np.random.Generator, kind: str, centre: tuple[int, int], size: int) -> None:
    colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
    cx, cy = centre
    if kind == "circle":
        cv2.circle(image, (cx, cy), size, colour, thickness=-1, lineType=cv2.LINE_AA)
    elif kind == "rectangle":
        cv2.rectangle(image, (cx - size, cy - size // 2), (cx + size, cy + size // 2), colour, thickness=-1)
    elif kind == "triangle":
        points = np.array([[cx, cy - size], [cx - size, cy + size], [cx + size, cy + size]], dtype=np.int32)
        cv2.fillPoly(image, [points], colour, lineType=cv2.LINE_AA)
    else:
        cv2.ellipse(image, (cx, cy), (size, size // 2), float(rng.integers(0, 180)), 0, 360, colour, -1, cv2.LINE_AA)


def scene(seed: int, height: int = 512, width: int = 512, n_shapes: int = 6) -> np.ndarray:
    """One synthetic RGB scene: a gradient background with `n_shapes` filled shapes."""
    rng = np.random.default_rng(seed)
    image = _background(rng, height, width)
    for _ in range(n_shapes):
        size = int(rng.integers(max(4, min(height, width) // 20), max(8, min(height, width) // 6)))
        centre = (int(rng.integers(size, max(size + 1, width - size))), int(rng.integers(size, max(size + 1, height - size))))
        _draw_shape(image, rng, str(rng.choice(_SHAPES)), centre, size)
    return image


@dataclass(frozen=True)
class SamplePair:
    """Two near-identical RGB images that differ in one shape, with captions naming it."""

    image1: np.ndarray
    image2: np.ndarray
    caption1: str
    caption2: str
    object1: str  # the word naming the changed object in each caption
    object2: str


_OBJECTS = ("ball", "box", "kite", "plate", "lamp", "clock", "boat", "plane")


def pair(seed: int, height: int = 512, width: int = 512) -> SamplePair:
    """A scene and a copy of it where one extra object was drawn in a different shape and colour."""
    rng = np.random.default_rng(seed + 1_000_003)
    base = scene(seed, height, width)
    image1, image2 = base.copy(), base.copy()
    size = int(rng.integers(min(height, width) // 10, min(height, width) // 5))
    centre = (int(rng.integers(size, width - size)), int(rng.integers(size, height - size)))
    kind1, kind2 = rng.choice(_SHAPES, size=2, replace=False)
    _draw_shape(image1, rng, str(kind1), centre, size)
    _draw_shape(image2, rng, str(kind2), centre, size)
    word1, word2 = rng.choice(_OBJECTS, size=2, replace=False)
    return SamplePair(
        image1=image1,
        image2=image2,
        caption1=f"A {word1} on a table in the room.",
        caption2=f"A {word2} on a table in the room.",
        object1=str(word1),
        object2=str(word2),
    )


def calibration_images(count: int = 8, height: int = 640, width: int = 640) -> list[np.ndarray]:
    """Deterministic RGB images of varied content for calibration and verification."""
    shapes = [(height, width), (height * 3 // 4, width), (height, width * 3 // 4)]
    return [scene(1000 + i, *shapes[i % len(shapes)], n_shapes=4 + i % 6) for i in range(count)]
