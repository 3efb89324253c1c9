"""Box arithmetic in vectorised numpy: conversions, NMS, IoU, FastSAM's box rules (the empty-mask
rule is in masks.py).

Each function mirrors one piece of the reference (Ultralytics 8.4 / torchvision / Data-Juicer)
and says which; all work in float32 like the reference does.
"""

from __future__ import annotations

import numpy as np


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """Centre (cx, cy, w, h) to corners (x1, y1, x2, y2), float32 (Ultralytics xywh2xyxy)."""
    boxes = np.asarray(boxes, dtype=np.float32)
    half = boxes[:, 2:4] / np.float32(2)
    return np.concatenate([boxes[:, 0:2] - half, boxes[:, 0:2] + half], axis=1)


def xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    """Corners to centre (cx, cy, w, h), float32 (Ultralytics xyxy2xywh)."""
    boxes = np.asarray(boxes, dtype=np.float32)
    centre = (boxes[:, 0:2] + boxes[:, 2:4]) / np.float32(2)
    return np.concatenate([centre, boxes[:, 2:4] - boxes[:, 0:2]], axis=1)


def nms(boxes_xyxy: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS as torchvision.ops.nms: indices kept, by descending score; IoU > threshold suppresses.

    Areas without the +1 pixel convention.
    """
    n = len(scores)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(-scores, kind="stable")
    boxes = boxes_xyxy[order].astype(np.float32)
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1) * (y2 - y1)
    suppressed = np.zeros(n, dtype=bool)
    keep = []
    for i in range(n):
        if suppressed[i]:
            continue
        keep.append(i)
        rest = np.arange(i + 1, n)[~suppressed[i + 1 :]]
        if rest.size == 0:
            break
        w = np.maximum(np.float32(0), np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(np.float32(0), np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        iou = inter / (areas[i] + areas[rest] - inter)
        suppressed[rest[iou > np.float32(iou_threshold)]] = True
    return order[np.asarray(keep, dtype=np.int64)]


def greedy_overlap_filter(boxes_xywh: np.ndarray, iou_threshold: float = 0.5) -> np.ndarray:
    """Data-Juicer's iou_filter: keep the first box, drop later ones with IoU > threshold, repeat.

    Works in the given order (no score sort) with the +1 pixel area convention. Returns the
    indices kept, in order.
    """
    boxes = np.asarray(boxes_xywh, dtype=np.float32)
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    x1 = boxes[:, 0] - boxes[:, 2] / 2
    y1 = boxes[:, 1] - boxes[:, 3] / 2
    x2 = boxes[:, 0] + boxes[:, 2] / 2
    y2 = boxes[:, 1] + boxes[:, 3] / 2
    areas = (y2 - y1 + 1) * (x2 - x1 + 1)
    # every pair's IoU at once (the same float32 operations as box against box), then the greedy pass
    w = np.maximum(0, np.minimum(x2[:, None], x2[None, :]) - np.maximum(x1[:, None], x1[None, :]) + 1)
    h = np.maximum(0, np.minimum(y2[:, None], y2[None, :]) - np.maximum(y1[:, None], y1[None, :]) + 1)
    overlap = w * h
    with np.errstate(invalid="ignore", divide="ignore"):
        dropped_by = ~(overlap / (areas[:, None] + areas[None, :] - overlap) <= iou_threshold)  # NaN drops, as in the original
    keep = []
    alive = np.ones(len(boxes), dtype=bool)
    for i in range(len(boxes)):
        if alive[i]:
            keep.append(i)
            alive &= ~dropped_by[i]
    return np.asarray(keep, dtype=np.int64)


def scale_boxes_to_original(boxes_xyxy: np.ndarray, input_shape: tuple[int, int], original_shape: tuple[int, int]) -> np.ndarray:
    """Undo the letterbox (Ultralytics scale_boxes with ratio_pad=None), then clip to the image."""
    boxes = np.array(boxes_xyxy, dtype=np.float32, copy=True)
    in_h, in_w = input_shape
    h0, w0 = original_shape
    gain = min(in_h / h0, in_w / w0)
    new_h, new_w = max(round(h0 * gain), 1), max(round(w0 * gain), 1)
    gain_y, gain_x = new_h / h0, new_w / w0
    pad_x, pad_y = round((in_w - new_w) / 2 - 0.1), round((in_h - new_h) / 2 - 0.1)
    boxes[:, [0, 2]] -= pad_x
    boxes[:, [1, 3]] -= pad_y
    boxes[:, [0, 2]] /= gain_x
    boxes[:, [1, 3]] /= gain_y
    return clip_boxes(boxes, original_shape)


def clip_boxes(boxes_xyxy: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    boxes = boxes_xyxy
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
    return boxes


def snap_to_border(boxes_xyxy: np.ndarray, shape: tuple[int, int], threshold: int = 20) -> np.ndarray:
    """FastSAM's adjust_bboxes_to_image_border: edges within `threshold` px move onto the border."""
    h, w = shape
    boxes = np.array(boxes_xyxy, dtype=np.float32, copy=True)
    boxes[boxes[:, 0] < threshold, 0] = 0
    boxes[boxes[:, 1] < threshold, 1] = 0
    boxes[boxes[:, 2] > w - threshold, 2] = w
    boxes[boxes[:, 3] > h - threshold, 3] = h
    return boxes


def iou_with(box_xyxy: np.ndarray, boxes_xyxy: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    """IoU of one box with many (Ultralytics box_iou: no +1, eps in the denominator)."""
    a = np.asarray(box_xyxy, dtype=np.float32)
    b = np.asarray(boxes_xyxy, dtype=np.float32)
    w = (np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0])).clip(0)
    h = (np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1])).clip(0)
    inter = w * h
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area_a + area_b - inter + np.float32(eps))


def fastsam_full_image_rule(boxes_xyxy: np.ndarray, shape: tuple[int, int], threshold: float = 0.9) -> np.ndarray:
    """FastSAM: border snap on all boxes, then boxes with IoU > 0.9 with the image become the image."""
    h, w = shape
    boxes = snap_to_border(boxes_xyxy, shape)
    if len(boxes):
        full = np.array([0, 0, w, h], dtype=np.float32)
        boxes[iou_with(full, boxes) > threshold] = full
    return boxes


def box_matches(a_xywh: np.ndarray, b_xywh: np.ndarray, iou_threshold: float = 0.9) -> int:
    """Pairs in a greedy one-to-one matching of two box sets at IoU >= threshold (a's order)."""
    a, b = xywh_to_xyxy(np.asarray(a_xywh).reshape(-1, 4)), xywh_to_xyxy(np.asarray(b_xywh).reshape(-1, 4))
    if len(a) == 0 or len(b) == 0:
        return 0
    free = np.ones(len(b), dtype=bool)
    matches = 0
    for box in a:
        ious = np.where(free, iou_with(box, b), -1.0)
        j = int(np.argmax(ious))
        if ious[j] >= iou_threshold:
            free[j] = False
            matches += 1
    return matches


def box_f1(a_xywh: np.ndarray, b_xywh: np.ndarray, iou_threshold: float = 0.9) -> float:
    """Agreement of two box sets: F1 of a greedy one-to-one matching at IoU >= threshold.

    1.0 when both are empty.
    """
    n = len(np.asarray(a_xywh).reshape(-1, 4)) + len(np.asarray(b_xywh).reshape(-1, 4))
    return 1.0 if n == 0 else 2.0 * box_matches(a_xywh, b_xywh, iou_threshold) / n
