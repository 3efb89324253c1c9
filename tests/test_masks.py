"""The empty-mask rule (imgdiff_onnx/engine/masks.py): exact against Ultralytics, and the same decisions
whether the prototypes are complete or computed tile by tile."""

import numpy as np
import pytest
import torch

from imgdiff_onnx.engine.masks import Prototypes, nonempty_masks
from imgdiff_onnx.engine.preprocess import LetterboxSettings, letterbox

from .conftest import DATA


def _case(original: tuple[int, int], seed: int = 3):
    """Prototypes, coefficients and boxes where some masks are positive somewhere and others
    negative everywhere."""
    rng = np.random.default_rng(seed)
    h, w = original
    shape = letterbox(np.zeros((h, w, 3), np.uint8), 640, LetterboxSettings()).tensor.shape[2:]
    protos = rng.uniform(0, 1, size=(32, shape[0] // 4, shape[1] // 4)).astype(np.float32)
    coeffs = (rng.normal(scale=0.15, size=(80, 32)) + rng.uniform(-0.15, 0.05, size=(80, 1))).astype(np.float32)
    xy = rng.uniform(0, [w, h], size=(80, 2))
    wh = rng.uniform(0.3, [w / 6, h / 6], size=(80, 2))
    boxes = np.clip(np.concatenate([xy, xy + wh], 1), 0, [w, h, w, h]).astype(np.float32)
    return protos, coeffs, boxes


def _tiled(protos: np.ndarray, tile: int, calls: list | None = None) -> Prototypes:
    def compute(r0, r1, c0, c1):
        if calls is not None:
            calls.append((r0, r1, c0, c1))
        return protos[:, r0:r1, c0:c1].copy()

    return Prototypes.tiled(protos.shape, tile, compute)


@pytest.mark.parametrize("original", [(1024, 1024), (480, 640), (500, 342), (37, 91)])
def test_empty_mask_rule_matches_ultralytics(original):
    """Nonempty masks computed through interpolation matrices equal Ultralytics' full-resolution masks."""
    from ultralytics.utils.ops import process_mask_native

    protos, coeffs, boxes = _case(original)
    h, w = original
    masks = process_mask_native(torch.from_numpy(protos), torch.from_numpy(coeffs), torch.from_numpy(boxes), (h, w))
    expected = (masks.amax((-2, -1)) > 0).numpy()
    ours = nonempty_masks(protos, coeffs, boxes, (h, w))
    assert 0 < expected.sum() < len(expected)  # the case distinguishes both outcomes
    np.testing.assert_array_equal(ours, expected)


@pytest.mark.parametrize("tile", [1, 3, 8, 32, 1000])
@pytest.mark.parametrize("original", [(1024, 1024), (480, 640), (500, 342), (37, 91)])
def test_tiled_prototypes_decide_like_complete_ones(original, tile):
    protos, coeffs, boxes = _case(original)
    expected = nonempty_masks(protos, coeffs, boxes, original)
    prototypes = _tiled(protos, tile)
    np.testing.assert_array_equal(nonempty_masks(prototypes, coeffs, boxes, original), expected)
    # every cell the rule read was computed from the right place
    known = prototypes.values != 0
    np.testing.assert_array_equal(prototypes.values[known], protos[known])


def test_tiles_come_known_first_then_nearest_the_centre():
    calls: list = []
    prototypes = _tiled(np.ones((1, 8, 8), np.float32), 4, calls)
    assert list(prototypes.tiles(5, 8, 5, 8)) == [(4, 8, 4, 8)]
    assert calls == [(4, 8, 4, 8)] and prototypes.computed_fraction == 0.25
    # the known tile first; then the one whose centre (2, 6) is nearest the window's (3, 4.5)...
    assert list(prototypes.tiles(0, 6, 1, 8)) == [(4, 8, 4, 8), (0, 4, 4, 8), (0, 4, 0, 4), (4, 8, 0, 4)]
    assert calls[1:] == [(0, 4, 4, 8), (0, 4, 0, 4), (4, 8, 0, 4)] and prototypes.computed_fraction == 1.0


def test_a_positive_pixel_in_the_centre_tile_decides_without_the_others():
    h = w = 64  # prototypes 16 x 16, tiles of 4 x 4 cells: 16 tiles
    protos = np.full((1, 16, 16), -1.0, np.float32)
    protos[0, 5, 5] = 1.0
    coeffs = np.ones((2, 1), np.float32)
    boxes = np.array([[0, 0, 64, 64], [0, 0, 30, 12]], np.float32)  # the whole image; a strip without the pixel
    calls: list = []
    prototypes = _tiled(protos, 4, calls)
    np.testing.assert_array_equal(nonempty_masks(prototypes, coeffs, boxes, (h, w)), [True, False])
    np.testing.assert_array_equal(nonempty_masks(protos, coeffs, boxes, (h, w)), [True, False])
    # box 1: a tile nearest its centre holds the pixel; box 2 (empty): every tile its window reads
    # (prototype rows 0-3, columns 0-7)
    assert calls == [(4, 8, 4, 8), (0, 4, 0, 4), (0, 4, 4, 8)]
    assert prototypes.computed_fraction == 3 / 16


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_split_fastsam_finds_the_same_boxes_as_the_whole_graph(tiny_models, precision):
    """The exported split (fastsam + fastsam_proto, prototypes on demand) against complete
    prototypes from the same graphs, on real photographs."""
    import cv2

    from imgdiff_onnx.engine.modelset import ModelSet, SessionSettings
    from imgdiff_onnx.engine.models.fastsam import postprocess, predictor_imgsz

    models = ModelSet(tiny_models, precision=precision)
    assert "fastsam_proto" in models.graphs
    segmenter = models.components(SessionSettings(threads=1), 16).segmenter
    fractions = []
    for path in sorted((DATA / "images").glob("*.jpg")) + sorted((DATA / "pairs").glob("*.jpg")):
        bgr = cv2.imread(str(path))
        lazy = segmenter.segment(bgr, 640, 0.05, 0.5)
        boxed = letterbox(bgr, predictor_imgsz(640, 32), models.letterbox)
        predictions, protos = segmenter.prototypes(boxed.tensor)
        complete = postprocess(predictions[0], protos[0], boxed.tensor.shape[2:], boxed.original_shape, 0.05, 0.5)
        np.testing.assert_array_equal(lazy.xywh, complete.xywh)
        np.testing.assert_array_equal(lazy.scores, complete.scores)
        assert complete.prototypes_computed == 1.0
        fractions.append(lazy.prototypes_computed)
    assert min(fractions) < 1.0  # some image needed only part of its prototypes


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_prototype_tiles_equal_the_whole_map_bit_for_bit(tiny_models, precision):
    """Every tile the segmenter computes equals the prototype head run on the whole feature map,
    at letterbox shapes whose edge tiles are partial (features a multiple of 4, not 8)."""
    import cv2

    from imgdiff_onnx.engine.modelset import ModelSet, SessionSettings
    from imgdiff_onnx.engine.models.fastsam import predictor_imgsz

    models = ModelSet(tiny_models, precision=precision)
    segmenter = models.components(SessionSettings(threads=1), 16).segmenter
    checked = 0
    for imgsz in (64, 96, 352, 480, 672):
        for name in ("cat.jpg", "img3.jpg"):
            boxed = letterbox(cv2.imread(str(DATA / "images" / name)), predictor_imgsz(imgsz, 32), models.letterbox)
            _, whole = segmenter.prototypes(boxed.tensor)
            features = segmenter._session.run(["proto_features"], {"images": boxed.tensor})[0]
            tiled = segmenter._tiled_prototypes(features)
            _, mh, mw = tiled.shape
            assert len(list(tiled.tiles(0, mh, 0, mw))) > 1 or imgsz == 64
            np.testing.assert_array_equal(tiled.values, whole[0])
            checked += 1
    assert checked == 10


def test_past_the_budget_the_rest_of_the_map_comes_in_one_call():
    protos = np.arange(2 * 8 * 8, dtype=np.float32).reshape(2, 8, 8)
    calls: list = []

    def compute(r0, r1, c0, c1):
        calls.append((r0, r1, c0, c1))
        return protos[:, r0:r1, c0:c1].copy()

    prototypes = Prototypes.tiled(protos.shape, 4, compute, budget=0.5)
    assert list(prototypes.tiles(0, 4, 0, 4)) == [(0, 4, 0, 4)]
    assert list(prototypes.tiles(0, 4, 4, 8)) == [(0, 4, 4, 8)]
    assert prototypes.computed_fraction == 0.5
    # a third tile would pass half of them: the whole map at once, every tile known from then on
    assert list(prototypes.tiles(4, 8, 0, 8)) == [(4, 8, 0, 4), (4, 8, 4, 8)]
    assert calls == [(0, 4, 0, 4), (0, 4, 4, 8), (0, 8, 0, 8)]
    assert prototypes.computed_fraction == 1.0
    np.testing.assert_array_equal(prototypes.values, protos)
