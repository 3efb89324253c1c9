"""Drawing a pair: image 1 | image 2 side by side, the same numbered, coloured boxes on both.

Box k (1-based, the result's order) gets colour PALETTE[(k - 1) % len(PALETTE)] on both images,
its outline drawn inside the box (the outline's outer edge is the box edge) and its number in a
filled tag at the top-left corner. Used by `PairResult.plot()` and the HTML report's images.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

# Tableau-like qualitative colours, RGB: distinct from one another on photographs
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 190), (0, 128, 128), (170, 110, 40),
)  # fmt: skip
GAP = 8  # pixels between the two images


def colour(k: int) -> tuple[int, int, int]:
    """RGB colour of box number k (1-based)."""
    return PALETTE[(k - 1) % len(PALETTE)]


def colour_hex(k: int) -> str:
    return "#{:02x}{:02x}{:02x}".format(*colour(k))


def box_corners(box_xywh: Sequence[float]) -> tuple[int, int, int, int]:
    """Centre xywh -> integer x1, y1, x2, y2 (exclusive) as the crops use them."""
    cx, cy, bw, bh = (float(v) for v in box_xywh)
    return int(round(cx - bw / 2)), int(round(cy - bh / 2)), int(round(cx + bw / 2)), int(round(cy + bh / 2))


def side_by_side(image1: np.ndarray, image2: np.ndarray) -> np.ndarray:
    """RGB canvas: image 1 | image 2 resized to image 1 (as the engine sees it)."""
    h, w = image1.shape[:2]
    if image2.shape[:2] != (h, w):
        image2 = cv2.resize(image2, (w, h), interpolation=cv2.INTER_LINEAR)
    canvas = np.full((h, 2 * w + GAP, 3), 255, np.uint8)
    canvas[:, :w] = image1
    canvas[:, w + GAP :] = image2
    return canvas


def draw_pair(image1: np.ndarray, image2: np.ndarray, boxes_xywh: Sequence[Sequence[float]], numbers: bool = True,
              thickness: int | None = None) -> np.ndarray:  # fmt: skip
    """RGB canvas of the pair with box k drawn in colour(k) on both images (and its number)."""
    canvas = side_by_side(image1, image2)
    h, w = image1.shape[:2]
    t = thickness or max(1, round(min(h, w) / 300))
    scale = max(0.4, min(h, w) / 900)
    for k, box in enumerate(boxes_xywh, start=1):
        x1, y1, x2, y2 = box_corners(box)
        rgb = colour(k)
        for offset in (0, w + GAP):
            for i in range(t):
                cv2.rectangle(canvas, (x1 + offset + i, y1 + i), (x2 - 1 + offset - i, y2 - 1 - i), rgb, 1)
            if numbers:
                label = str(k)
                (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
                x0, y0 = max(0, x1 + offset), max(0, y1)
                cv2.rectangle(canvas, (x0, y0), (x0 + tw + 4, y0 + th + base + 4), rgb, -1)
                dark = sum(rgb) > 382  # light tag: dark text
                cv2.putText(canvas, label, (x0 + 2, y0 + th + 2), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0) if dark else (255, 255, 255), 1, cv2.LINE_AA)
    return canvas
