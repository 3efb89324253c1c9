"""FastSAM's empty-mask rule, reading only the prototype cells it needs (S3 of DESIGN.md).

Ultralytics (retina_masks=True) computes every mask at full image resolution, crops it to its box
and drops detections whose mask has no positive pixel. The mask logits are a linear map of the
prototypes and bilinear resizing is linear too, so mask_i = Ry @ (c_i . P) @ Rx^T with sparse
interpolation matrices Ry, Rx: only the rows and columns inside a box are needed, and only the
prototype cells they read from.

The prototypes themselves need not all exist. FastSAM's prototype head is local (3x3 conv, 2x
transposed conv, 3x3 conv, 1x1 conv on the neck's stride-8 features), so a rectangle of prototype
cells can be computed from a slightly larger rectangle of features. `Prototypes.tiled` computes
tiles on demand: a box whose mask has a positive pixel in a tile already computed, or in the
tile nearest its centre, is decided without the rest of the image; a box with no positive pixel
in any single tile is checked over its whole window once every tile of it exists, exactly as
with complete prototypes. The decisions are the same; only the work differs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np

from ..errors import ParameterError

# a tile computes prototype cells [r0, r1) x [c0, c1) and returns them as (C, r1 - r0, c1 - c0)
TileFunction = Callable[[int, int, int, int], np.ndarray]


class Prototypes:
    """One image's mask prototypes (C, mh, mw): all of them, or computed tile by tile.

    A tile costs more than its share of the whole map (it reads a halo around itself), so once
    more than `budget` of the tiles would be computed, the rest of the map is computed at once."""

    def __init__(self, shape: tuple[int, int, int], tile: int, compute: TileFunction | None, values: np.ndarray | None = None, budget: float = 1.0):
        self.shape = shape
        self._tile = tile
        self._compute = compute
        self._budget = budget
        self.values = values if values is not None else np.zeros(shape, dtype=np.float32)
        _, mh, mw = shape
        self._known = np.zeros((math.ceil(mh / tile), math.ceil(mw / tile)), dtype=bool)
        if compute is None:
            self._known[:] = True

    @classmethod
    def complete(cls, protos: np.ndarray) -> "Prototypes":
        """Prototypes computed in full: one tile, the whole map."""
        _, mh, mw = protos.shape
        return cls(protos.shape, max(mh, mw, 1), None, protos)

    @classmethod
    def tiled(cls, shape: tuple[int, int, int], tile: int, compute: TileFunction, budget: float = 1.0) -> "Prototypes":
        """Prototypes computed `tile` x `tile` cells at a time, when first asked for; the whole
        map in one call instead once more than `budget` (a share) of the tiles would be computed."""
        if tile < 1:
            raise ParameterError(f"tile must be >= 1, got {tile}", "tile")
        return cls(shape, tile, compute, budget=budget)

    @property
    def computed_fraction(self) -> float:
        """Share of the tiles computed so far (1.0 for complete prototypes)."""
        return float(self._known.mean()) if self._known.size else 1.0

    def _bounds(self, i: int, j: int) -> tuple[int, int, int, int]:
        _, mh, mw = self.shape
        t = self._tile
        return i * t, min((i + 1) * t, mh), j * t, min((j + 1) * t, mw)

    def tiles(self, ra: int, rb: int, ca: int, cb: int) -> Iterator[tuple[int, int, int, int]]:
        """The tiles over cells [ra, rb) x [ca, cb), as (r0, r1, c0, c1): those already computed
        first, then the others nearest the window's centre first, each computed before it is
        given out."""
        t = self._tile
        centre = ((ra + rb) / 2, (ca + cb) / 2)
        cells = [(i, j) for i in range(ra // t, (rb - 1) // t + 1) for j in range(ca // t, (cb - 1) // t + 1)]

        def order(ij: tuple[int, int]) -> tuple[bool, float]:
            r0, r1, c0, c1 = self._bounds(*ij)
            return (not self._known[ij], (centre[0] - (r0 + r1) / 2) ** 2 + (centre[1] - (c0 + c1) / 2) ** 2)

        for i, j in sorted(cells, key=order):
            bounds = self._bounds(i, j)
            if not self._known[i, j]:
                if self._known.sum() + 1 > self._budget * self._known.size:
                    _, mh, mw = self.shape
                    self.values[:] = self._compute(0, mh, 0, mw)
                    self._known[:] = True
                else:
                    r0, r1, c0, c1 = bounds
                    self.values[:, r0:r1, c0:c1] = self._compute(r0, r1, c0, c1)
                    self._known[i, j] = True
            yield bounds


def _linear_interp_matrix(out_size: int, in_size: int) -> np.ndarray:
    """(out, in) matrix of torch bilinear interpolation (align_corners=False, no antialias) on one axis."""
    matrix = np.zeros((out_size, in_size), dtype=np.float64)
    scale = in_size / out_size
    dst = np.arange(out_size, dtype=np.float64)
    src = np.maximum((dst + 0.5) * scale - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    w1 = src - i0
    w0 = 1.0 - w1
    np.add.at(matrix, (np.arange(out_size), i0), w0)
    np.add.at(matrix, (np.arange(out_size), i1), w1)
    return matrix


def _mask_upsample_matrices(proto_shape: tuple[int, int], original_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Ry (h, mh) and Rx (w, mw): Ultralytics process_mask_native's two-step resize as matrices."""
    mh, mw = proto_shape
    h, w = original_shape
    gain = min(4 * mh / h, 4 * mw / w)
    pad = (4 * mh - max(round(h * gain), 1)) | (4 * mw - max(round(w * gain), 1))
    f = 4 // math.gcd(4, pad | pad // 2)
    # step 1: upsample the prototypes by f (bilinear)
    ry = _linear_interp_matrix(mh * f, mh) if f > 1 else np.eye(mh)
    rx = _linear_interp_matrix(mw * f, mw) if f > 1 else np.eye(mw)
    im1_h, im1_w = mh * f, mw * f
    if (im1_h, im1_w) == (h, w):
        return ry, rx
    # step 2: crop the letterbox padding and resize to the original image (scale_masks)
    gain2 = min(im1_h / h, im1_w / w)
    pad_w, pad_h = (im1_w - max(round(w * gain2), 1)) / 2, (im1_h - max(round(h * gain2), 1)) / 2
    top, left = round(pad_h - 0.1), round(pad_w - 0.1)
    bottom, right = top + max(round(h * gain2), 1), left + max(round(w * gain2), 1)
    ry = _linear_interp_matrix(h, bottom - top) @ ry[top:bottom]
    rx = _linear_interp_matrix(w, right - left) @ rx[left:right]
    return ry, rx


def _support(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each row of an interpolation matrix: its first and last nonzero column (contiguous)."""
    nonzero = matrix != 0
    first = nonzero.argmax(axis=1)
    last = matrix.shape[1] - 1 - nonzero[:, ::-1].argmax(axis=1)
    return first, last


def _any_positive(values: np.ndarray, weights: np.ndarray, rows: np.ndarray, cols: np.ndarray, ra: int, rb: int, ca: int, cb: int) -> bool:
    """Does any pixel of rows x cols have a mask logit > 0, reading prototype cells [ra, rb) x [ca, cb)?"""
    channels = values.shape[0]
    sub = values[:, ra:rb, ca:cb].reshape(channels, -1).astype(np.float64)
    window = (weights @ sub).reshape(rb - ra, cb - ca)
    logits = rows[:, ra:rb] @ window @ cols[:, ca:cb].T
    return bool((logits > 0).any())


def nonempty_masks(protos: Prototypes | np.ndarray, coefficients: np.ndarray, boxes_xyxy: np.ndarray, original_shape: tuple[int, int]) -> np.ndarray:
    """For each detection: does its full-resolution mask, cropped to its box, have a pixel > 0?

    protos: (32, mh, mw) or Prototypes; coefficients: (N, 32); boxes in original-image pixels
    (scaled, clipped). Pixels inside a box: columns c with x1 <= c < x2, rows r with y1 <= r < y2
    (crop_mask).
    """
    if isinstance(protos, np.ndarray):
        protos = Prototypes.complete(protos)
    n = len(boxes_xyxy)
    result = np.zeros(n, dtype=bool)
    if n == 0:
        return result
    _, mh, mw = protos.shape
    ry, rx = _mask_upsample_matrices((mh, mw), original_shape)
    row_first, row_last = _support(ry)
    col_first, col_last = _support(rx)
    h, w = original_shape
    for i in range(n):
        x1, y1, x2, y2 = (float(v) for v in boxes_xyxy[i])
        c0, c1 = max(math.ceil(x1), 0), min(math.ceil(x2), w)
        r0, r1 = max(math.ceil(y1), 0), min(math.ceil(y2), h)
        if c1 <= c0 or r1 <= r0:
            continue
        # the prototype window the box reads from
        ra, rb = int(row_first[r0:r1].min()), int(row_last[r0:r1].max()) + 1
        ca, cb = int(col_first[c0:c1].min()), int(col_last[c0:c1].max()) + 1
        weights = coefficients[i].astype(np.float64)
        decided = False
        for t0, t1, u0, u1 in protos.tiles(ra, rb, ca, cb):
            if t0 <= ra and t1 >= rb and u0 <= ca and u1 >= cb:  # one tile holds the whole window
                result[i], decided = _any_positive(protos.values, weights, ry[r0:r1], rx[c0:c1], ra, rb, ca, cb), True
                break
            # the box's pixels that read only from this tile
            in_rows = (row_first[r0:r1] >= t0) & (row_last[r0:r1] < t1)
            in_cols = (col_first[c0:c1] >= u0) & (col_last[c0:c1] < u1)
            if in_rows.any() and in_cols.any():
                a, b, c, d = max(t0, ra), min(t1, rb), max(u0, ca), min(u1, cb)
                if _any_positive(protos.values, weights, ry[r0:r1][in_rows], rx[c0:c1][in_cols], a, b, c, d):
                    result[i], decided = True, True
                    break
        if not decided:  # every tile of the window now exists: the whole window at once
            result[i] = _any_positive(protos.values, weights, ry[r0:r1], rx[c0:c1], ra, rb, ca, cb)
    return result
