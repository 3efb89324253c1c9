"""FastSAM on onnxruntime: letterbox in, boxes out (S3 of DESIGN.md), with post-processing in numpy."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from .. import boxes as bx
from ..preprocess import LetterboxSettings, letterbox
from .batching import run_graph

MAX_NMS = 30000  # Ultralytics: at most this many candidates enter NMS (highest scores)


@dataclass(frozen=True)
class Detections:
    """FastSAM boxes of one image in original pixels, detection order."""

    xywh: np.ndarray  # float32 (K, 4), centre-based
    scores: np.ndarray  # float32 (K,)


def postprocess(
    predictions: np.ndarray,
    protos: np.ndarray,
    input_shape: tuple[int, int],
    original_shape: tuple[int, int],
    conf: float,
    iou: float,
    max_det: int = 300,
) -> Detections:
    """One image's raw outputs to FastSAM boxes, as Ultralytics' FastSAM predictor does it.

    predictions: (4 + 1 + 32, A); protos: (32, H/4, W/4). NMS (score > conf, IoU > iou
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
    nonempty = bx.nonempty_masks(protos, table[:, 5:], xyxy, original_shape)
    xyxy, table = xyxy[nonempty], table[nonempty]
    xyxy = bx.fastsam_full_image_rule(xyxy, original_shape)
    return Detections(xywh=bx.xyxy_to_xywh(xyxy), scores=table[:, 4].astype(np.float32))


def predictor_imgsz(imgsz: int, stride: int) -> int:
    """Ultralytics' check_imgsz: the size rounded up to a multiple of the stride."""
    return max(math.ceil(imgsz / stride) * stride, 0)


class FastSamSegmenter:
    """The `fastsam` graph: one image per call (each image has its own letterbox shape)."""

    def __init__(self, session: ort.InferenceSession, settings: LetterboxSettings):
        self._session = session
        self._settings = settings

    def segment(self, bgr: np.ndarray, imgsz: int, conf: float, iou: float, max_det: int = 300) -> Detections:
        boxed = letterbox(bgr, predictor_imgsz(imgsz, self._settings.stride), self._settings)
        predictions, protos = run_graph(self._session, "fastsam", ["predictions", "protos"], {"images": boxed.tensor})
        return postprocess(predictions[0], protos[0], boxed.tensor.shape[2:], boxed.original_shape, conf, iou, max_det)
