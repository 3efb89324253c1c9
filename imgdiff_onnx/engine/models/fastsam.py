"""FastSAM on onnxruntime: letterbox in, boxes out (S3 of DESIGN.md), with post-processing in numpy.

A model folder holds FastSAM either as one graph (`fastsam`: predictions and prototypes) or split
in two (`fastsam`: predictions and the stride-8 features the prototype head reads;
`fastsam_proto`: features -> prototypes). With the split, prototypes are computed tile by tile,
only where the empty-mask rule looks (masks.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from .. import boxes as bx
from ...errors import ModelFolderError
from ..masks import Prototypes, nonempty_masks
from ..preprocess import LetterboxSettings, letterbox
from .batching import OwnOutputs, run_graph

MAX_NMS = 30000  # Ultralytics: at most this many candidates enter NMS (highest scores)
PROTO_TILE = 16  # prototype cells per tile side (8 feature cells, 64 input pixels)
PROTO_HALO = 2  # feature cells each side a tile reads beyond its own (3x3 conv, 2x up, 3x3 conv)
# feature cells a tile's window spans at least, per side (more halo where the tile is small):
# onnxruntime's fp32 kernels take other paths, with other rounding, on very small inputs; from
# this size on the tiles equal the whole map's prototypes bit for bit (tests/test_masks.py)
PROTO_MIN_WINDOW = 12
# share of the tiles after which the rest of the map is computed in one call: an 8x8 tile reads a
# 12x12 window, ~2.25x its share of the whole map, so past about a third of the tiles the whole
# map is cheaper than going on tile by tile (worst case: ~1.75x the head's whole-map cost)
PROTO_TILE_BUDGET = 1 / 3


@dataclass(frozen=True)
class Detections:
    """FastSAM boxes of one image in original pixels, detection order."""

    xywh: np.ndarray  # float32 (K, 4), centre-based
    scores: np.ndarray  # float32 (K,)
    prototypes_computed: float = 1.0  # share of the prototype tiles the empty-mask rule needed


def postprocess(
    predictions: np.ndarray,
    protos: np.ndarray | Prototypes,
    input_shape: tuple[int, int],
    original_shape: tuple[int, int],
    conf: float,
    iou: float,
    max_det: int = 300,
) -> Detections:
    """One image's raw outputs to FastSAM boxes, as Ultralytics' FastSAM predictor does it.

    predictions: (4 + 1 + 32, A); protos: (32, H/4, W/4), complete or tiled. NMS (score > conf, IoU > iou
    suppresses, at most max_det), scale back and clip, drop empty masks, FastSAM's border snap
    and full-image rule, then centre xywh.
    """
    table = predictions.T
    scores = table[:, 4]
    candidates = np.flatnonzero(scores > np.float32(conf))
    if candidates.size > MAX_NMS:
        candidates = candidates[np.argsort(-scores[candidates], kind="stable")[:MAX_NMS]]
    table = table[candidates]
    xyxy = bx.xywh_to_xyxy(table[:, :4])
    keep = bx.nms(xyxy, table[:, 4], iou)[:max_det]
    xyxy, table = xyxy[keep], table[keep]
    xyxy = bx.scale_boxes_to_original(xyxy, input_shape, original_shape)
    prototypes = Prototypes.complete(protos) if isinstance(protos, np.ndarray) else protos
    nonempty = nonempty_masks(prototypes, table[:, 5:], xyxy, original_shape)
    xyxy, table = xyxy[nonempty], table[nonempty]
    xyxy = bx.fastsam_full_image_rule(xyxy, original_shape)
    return Detections(xywh=bx.xyxy_to_xywh(xyxy), scores=table[:, 4].astype(np.float32), prototypes_computed=prototypes.computed_fraction)


def predictor_imgsz(imgsz: int, stride: int) -> int:
    """Ultralytics' check_imgsz: the size rounded up to a multiple of the stride."""
    return max(math.ceil(imgsz / stride) * stride, 0)


def _window(start: int, stop: int, size: int) -> tuple[int, int]:
    """Feature cells [start, stop) with PROTO_HALO cells each side, widened to PROTO_MIN_WINDOW,
    within [0, size)."""
    lo, hi = max(start - PROTO_HALO, 0), min(stop + PROTO_HALO, size)
    lo = max(min(lo, hi - PROTO_MIN_WINDOW), 0)
    hi = min(max(hi, lo + PROTO_MIN_WINDOW), size)
    return lo, hi


class FastSamSegmenter:
    """FastSAM graphs, one image per call (each image has its own letterbox shape).

    proto_session: the `fastsam_proto` graph of a split folder (prototypes on demand), or None
    when `fastsam` outputs the prototypes itself. run_options: for the `fastsam` graph's runs
    (what its session settings need, see modelset.run_options).
    """

    def __init__(
        self,
        session: ort.InferenceSession,
        settings: LetterboxSettings,
        proto_session: ort.InferenceSession | None = None,
        run_options: ort.RunOptions | None = None,
    ):
        self._session = session
        self._run_options = run_options
        self._settings = settings
        self._proto_session = proto_session
        self._outputs = ["predictions", "protos" if proto_session is None else "proto_features"]
        # in a shrinking arena (run_options given) the outputs go into arrays of ours, so that the
        # arena keeps none of its regions after the run
        self._own_outputs = OwnOutputs("fastsam", self._outputs)
        if proto_session is not None:
            channels = proto_session.get_outputs()[0].shape[1]
            if not isinstance(channels, int):
                raise ModelFolderError(f"fastsam_proto graph: the prototype channel count is not fixed ({channels!r}); export the folder again")
            self._proto_channels = channels

    def segment(self, bgr: np.ndarray, imgsz: int, conf: float, iou: float, max_det: int = 300) -> Detections:
        boxed = letterbox(bgr, predictor_imgsz(imgsz, self._settings.stride), self._settings)
        predictions, second = self._network(boxed.tensor)
        prototypes = Prototypes.complete(second[0]) if self._proto_session is None else self._tiled_prototypes(second)
        return postprocess(predictions[0], prototypes, boxed.tensor.shape[2:], boxed.original_shape, conf, iou, max_det)

    def prototypes(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Predictions and complete prototypes of a letterboxed batch, whichever the layout."""
        predictions, second = self._network(images)
        if self._proto_session is None:
            return predictions, second
        (protos,) = run_graph(self._proto_session, "fastsam_proto", ["protos"], {"proto_features": second})
        return predictions, protos

    def _network(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The `fastsam` graph: predictions, and the prototypes (one graph) or the features the
        prototype head reads (split)."""
        feeds = {"images": images}
        if self._run_options is not None:
            predictions, out = self._own_outputs.run(self._session, feeds, self._run_options)
        else:
            predictions, out = run_graph(self._session, "fastsam", self._outputs, feeds)
        return predictions, out

    def _tiled_prototypes(self, features: np.ndarray) -> Prototypes:
        """Prototypes of one image's features (1, C, fh, fw), computed PROTO_TILE cells at a time."""
        _, _, fh, fw = features.shape

        def compute(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
            # prototype cells [r0, r1) come from feature cells [r0/2, r1/2) plus the halo
            a0, a1 = _window(r0 // 2, r1 // 2, fh)
            b0, b1 = _window(c0 // 2, c1 // 2, fw)
            window = np.ascontiguousarray(features[:, :, a0:a1, b0:b1])
            (protos,) = run_graph(self._proto_session, "fastsam_proto", ["protos"], {"proto_features": window})
            top, left = r0 - 2 * a0, c0 - 2 * b0
            return protos[0, :, top : top + r1 - r0, left : left + c1 - c0]

        return Prototypes.tiled((self._proto_channels, 2 * fh, 2 * fw), PROTO_TILE, compute, PROTO_TILE_BUDGET)
