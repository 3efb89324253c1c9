"""Box arithmetic against torchvision / Ultralytics / Data-Juicer, with exact expectations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imgdiff_onnx.engine import boxes as bx


def _random_boxes(rng, n, size=500):
    xy = rng.uniform(0, size, size=(n, 2))
    wh = rng.uniform(1, size / 3, size=(n, 2))
    return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)


@pytest.mark.parametrize("seed", range(5))
def test_nms_matches_torchvision(seed):
    import torchvision

    rng = np.random.default_rng(seed)
    boxes = _random_boxes(rng, 400)
    scores = rng.uniform(size=400).astype(np.float32)
    expected = torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), 0.5).numpy()
    np.testing.assert_array_equal(bx.nms(boxes, scores, 0.5), expected)


def test_nms_empty():
    assert bx.nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.5).shape == (0,)


def test_greedy_overlap_filter_exact():
    # centre boxes: 0 and 1 overlap heavily, 2 is apart, 3 overlaps 2 just below 0.5
    boxes = np.array([[50, 50, 40, 40], [52, 50, 40, 40], [200, 200, 20, 20], [210, 200, 20, 20]], np.float32)
    # box 3 vs 2 with +1 areas: inter 11*21=231, union 441+441-231=651 -> 0.355 <= 0.5, kept
    np.testing.assert_array_equal(bx.greedy_overlap_filter(boxes), [0, 2, 3])
    # order matters (no score sort): reversed order keeps the other of the first two
    np.testing.assert_array_equal(bx.greedy_overlap_filter(boxes[[1, 0, 2, 3]]), [0, 2, 3])


@pytest.mark.parametrize("seed", range(3))
def test_greedy_overlap_filter_matches_data_juicer(seed):
    from benchmarks.reference import iou_filter

    rng = np.random.default_rng(seed)
    xyxy = _random_boxes(rng, 60, size=200)
    xywh = bx.xyxy_to_xywh(xyxy)
    assert list(bx.greedy_overlap_filter(xywh)) == iou_filter(xywh)


def test_fastsam_border_and_full_image_rules():
    shape = (100, 200)  # h, w
    boxes = np.array([[15, 5, 150, 85], [30, 30, 60, 60], [2, 3, 199, 97]], np.float32)
    out = bx.fastsam_full_image_rule(boxes, shape)
    np.testing.assert_array_equal(out[0], [0, 0, 150, 100])  # x1<20, y1<20 -> 0; y2>80 -> 100
    np.testing.assert_array_equal(out[1], [30, 30, 60, 60])
    np.testing.assert_array_equal(out[2], [0, 0, 200, 100])  # snapped, IoU with image > 0.9


def test_fastsam_rules_match_ultralytics():
    from ultralytics.models.fastsam.utils import adjust_bboxes_to_image_border
    from ultralytics.utils.metrics import box_iou

    rng = np.random.default_rng(1)
    h, w = 300, 400
    boxes = np.clip(_random_boxes(rng, 50, size=400), 0, [w, h, w, h]).astype(np.float32)
    boxes[:5] = [[3, 4, 396, 295], [0, 0, 400, 300], [25, 25, 380, 290], [10, 10, 50, 50], [350, 250, 399, 299]]
    t = torch.from_numpy(boxes.copy())
    t = adjust_bboxes_to_image_border(t, (h, w))
    full = torch.tensor([0, 0, w, h], dtype=torch.float32)
    idx = torch.nonzero(box_iou(full[None], t)[0] > 0.9).flatten()
    t[idx] = full
    np.testing.assert_array_equal(bx.fastsam_full_image_rule(boxes, (h, w)), t.numpy())


def test_scale_boxes_matches_ultralytics():
    from ultralytics.utils.ops import scale_boxes

    rng = np.random.default_rng(2)
    for input_shape, original in [((1024, 768), (2048, 1536)), ((768, 1024), (480, 640)), ((352, 256), (500, 342))]:
        boxes = _random_boxes(rng, 30, size=min(input_shape))
        expected = scale_boxes(input_shape, torch.from_numpy(boxes.copy()), original).numpy()
        np.testing.assert_allclose(bx.scale_boxes_to_original(boxes, input_shape, original), expected, atol=1e-4)


def test_box_f1():
    a = np.array([[10, 10, 4, 4], [50, 50, 10, 10]], np.float32)
    assert bx.box_f1(a, a) == 1.0
    assert bx.box_f1(a, a[:1]) == pytest.approx(2 / 3)
    assert bx.box_f1(np.zeros((0, 4)), np.zeros((0, 4))) == 1.0
