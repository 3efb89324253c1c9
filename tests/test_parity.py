"""Engine (ONNX fp32) vs the PyTorch reference (original order of work) on the same weights.

Tiny random-init models by default. For the full-size check, point IMGDIFF_PARITY_MODELS at a
folder from `python -m imgdiff_onnx.export --random-init full --out DIR` and run
`IMGDIFF_PARITY_MODELS=DIR python -m pytest tests/test_parity.py` (slow: the reference runs BLIP
once per crop and word). IMGDIFF_PARITY_PAIRS (comma-separated names, e.g. "real pair") limits
the pairs for that slow run.

Thresholds are chosen from the models' observed scores (random weights make the defaults pass
or reject everything) so that every gate passes some candidates and rejects others.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from imgdiff_onnx import DifferenceAreaGenerator, EngineSettings, OperatorParams, PairInput
from imgdiff_onnx.imageio import load_image_file

from .conftest import DATA, PAIR1, PAIR2, PAIR_CAPTIONS

BOX_TOL_PX = 0.05  # ONNX vs torch network outputs differ by ~1e-5 relative; measured max ~0.01 px at imgsz 640-1024
SIM_TOL = 1e-4


def _pairs():
    wanted = {n.strip() for n in os.environ.get("IMGDIFF_PARITY_PAIRS", "").split(",") if n.strip()}
    return [p for p in _all_pairs() if not wanted or p[0] in wanted]


def _all_pairs():
    rgb8 = load_image_file(DATA / "images/img8.jpg").rgb
    edited = rgb8.copy()
    cv2.rectangle(edited, (300, 400), (520, 640), (20, 200, 40), -1)
    edited = cv2.resize(edited, (700, 900), interpolation=cv2.INTER_AREA)
    return [
        ("real pair", load_image_file(PAIR1).rgb, load_image_file(PAIR2).rgb, *PAIR_CAPTIONS),
        ("different sizes", rgb8, edited, "A bench by the road.", "A box by the road."),
        ("unrelated photos", load_image_file(DATA / "images/cat.jpg").rgb, load_image_file(DATA / "images/lena.jpg").rgb, "A cat on a sofa.", "A woman in a hat."),
    ]


def _split_point(values: list[float], quantile: float) -> float:
    """A threshold in the widest gap between sorted values near the given quantile."""
    v = np.unique(np.asarray(values, dtype=np.float64))
    if len(v) < 2:
        raise AssertionError("not enough distinct scores to place a threshold")
    centre = int(quantile * (len(v) - 1))
    lo, hi = max(0, centre - max(1, len(v) // 8)), min(len(v) - 1, centre + max(1, len(v) // 8))
    gaps = np.diff(v[lo : hi + 1])
    k = lo + int(np.argmax(gaps))
    return float((v[k] + v[k + 1]) / 2)


@pytest.fixture(scope="module")
def models(tiny_models) -> Path:
    return Path(os.environ.get("IMGDIFF_PARITY_MODELS", tiny_models))


@pytest.fixture(scope="module")
def imgsz(models, tiny_models) -> int:
    return 640 if models == tiny_models else 1024


@pytest.fixture(scope="module")
def comparison(models, imgsz):
    from benchmarks.reference import TorchReference

    open_params = OperatorParams.from_dicts({"min_score_1": -1, "min_score_2": -1, "max_score_2": 1}, {"imgsz": imgsz}, {"min_score": 0, "max_score": 1})
    ref = TorchReference(models / "torch" / "clip", models / "torch" / "blip", models / "torch" / "fastsam.pt", open_params, threads=2)
    pairs = _pairs()
    # pass 1: observed score distributions with every gate open
    itm, sims = [], []
    for _, a, b, c1, c2 in pairs:
        r = ref.process(a, b, c1, c2)
        itm += list(r.itm_scores1.values()) + list(r.itm_scores2.values())
        sims += list(r.crop_similarities.values())
    params = OperatorParams.from_dicts(
        {"min_score_1": -1, "max_score_1": 1, "min_score_2": -1, "max_score_2": _split_point(sims, 0.6)},
        {"imgsz": imgsz},
        {"min_score": _split_point(itm, 0.4), "max_score": 1},
    )
    ref.params = params
    engine = DifferenceAreaGenerator(models, params, EngineSettings(precision="fp32", threads=2))
    out = []
    for name, a, b, c1, c2 in pairs:
        out.append((name, ref.process(a, b, c1, c2), engine.process(PairInput(a, b, c1, c2, key=name))))
    return out


def test_same_objects_and_pair_similarity(comparison):
    for name, r, e in comparison:
        assert (e.objects1, e.objects2) == (r.objects1, r.objects2), name
        assert abs(e.pair_similarity - r.pair_similarity) < SIM_TOL, name


def test_same_candidates(comparison):
    for name, r, e in comparison:
        assert e.candidate_boxes.shape == r.candidate_boxes.shape, name
        assert len(r.candidate_boxes) > 0, name
        np.testing.assert_allclose(e.candidate_boxes, r.candidate_boxes, atol=BOX_TOL_PX, err_msg=name)


def test_same_sets_after_every_gate(comparison):
    for name, r, e in comparison:
        # S5 both sides AND S6 in the reference's order == the engine's cheapest-first order
        assert e.survivors == r.survivors, name
        assert e.kept == r.kept, name
        np.testing.assert_allclose(e.boxes, r.boxes, atol=BOX_TOL_PX, err_msg=name)
        # the engine's last gate count is the survivor set; earlier counts bound it
        assert e.counts["after_itm_image2"] == len(r.survivors), name
        assert e.counts["after_crop_pair_gate"] >= e.counts["after_itm_image1"] >= len(r.survivors), name


def test_every_gate_passes_some_and_rejects_some(comparison):
    """Across the test pairs each gate is selective, so the parity above is not vacuous."""
    total = sum(len(r.candidate_boxes) for _, r, _ in comparison)
    itm1 = sum(len(r.itm1_passed) for _, r, _ in comparison)
    itm = sum(len(r.itm_passed) for _, r, _ in comparison)
    surv = sum(len(r.survivors) for _, r, _ in comparison)
    kept = sum(len(r.kept) for _, r, _ in comparison)
    assert 0 < itm1 < total
    assert 0 < itm <= itm1
    assert 0 < surv < itm
    assert 0 < kept <= surv
