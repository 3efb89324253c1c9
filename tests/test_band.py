"""The guard band (imgdiff_onnx.engine.band) and the identical-crop shortcut.

The flip tests place a threshold between the fp32 and the int8 score of a real candidate (found
from the diagnostics of an fp32 run and an int8 run on the tiny models): there the int8 engine
decides otherwise than fp32, and the banded default must not.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from imgdiff_onnx.engine import manifest as mf
from imgdiff_onnx.engine.band import SCORES, BandTally, GuardBand, Margin, near
from imgdiff_onnx.errors import ModelFolderError
from imgdiff_onnx.imageio import load_image_file
from imgdiff_onnx.engine.models.clip import cosine
from imgdiff_onnx.engine.modelset import ModelSet, SessionPool, resolve_precision
from imgdiff_onnx.params import OperatorParams
from imgdiff_onnx.engine.pipeline import DifferenceAreaGenerator, EngineSettings, PairInput
from imgdiff_onnx.engine.precision import Precision, PrecisionError
from imgdiff_onnx.engine.stages.crops import crop, distinct

from .conftest import DATA, PAIR1, PAIR2

# the suite runs on pytest-xdist workers: this file's tests stay on one worker, where they share
# module fixtures that take seconds to compute
pytestmark = pytest.mark.xdist_group("band")

INT8 = "fastsam=fp32,clip=int8,blip=int8"  # the unbanded int8 CLIP and BLIP, same candidates as fp32
OPEN = {"min_score_1": -1.0, "max_score_1": 1.0, "min_score_2": -1.0, "max_score_2": 1.0}


# ---- the band's logic -------------------------------------------------------------------------

unit = st.floats(-1.0, 1.0, allow_nan=False)


@given(unit, unit, st.floats(0.0, 0.2, allow_nan=False), st.floats(-0.2, 0.2, allow_nan=False), st.floats(-1.0, 1.0, allow_nan=False))
def test_a_banded_decision_is_the_fp32_decision_whenever_the_error_is_within_the_margin(low, high, margin, error, fp32):
    assume(low <= high)
    int8 = fp32 + error
    assume(abs(int8 - fp32) <= margin)  # the guarantee's premise, on the computed values

    def decide(score: float) -> bool:
        return low <= score <= high

    banded = decide(fp32) if near(int8, low, high, margin) else decide(int8)
    assert banded == decide(fp32)


@given(unit, st.floats(0.0, 0.5, allow_nan=False))
def test_the_band_is_closed_at_threshold_plus_and_minus_the_margin(threshold, margin):
    assert near(threshold, threshold, 1.0, margin)
    for edge in (threshold - margin, threshold + margin):
        if abs(edge - threshold) <= margin:  # exactly representable distance
            assert near(edge, threshold, 5.0, margin)
    beyond = threshold + 2 * margin + 1e-9
    assert not near(beyond, threshold, 5.0, margin)


def test_a_score_that_is_not_a_number_is_always_in_the_band():
    assert near(np.array([math.nan, math.inf, -math.inf, 0.5]), 0.0, 1.0, 0.0).tolist() == [True, True, True, False]


@pytest.mark.parametrize("value", [math.nan, math.inf, -0.1, True, "0.1"])
def test_a_margin_that_is_not_a_finite_number_at_least_zero_is_refused(value):
    with pytest.raises(ModelFolderError, match="margin must be a finite number"):
        Margin(value, 0.0, 1, "x", "test")  # type: ignore[arg-type]


def test_a_margin_below_its_measured_error_is_refused():
    with pytest.raises(ModelFolderError, match="below the error"):
        Margin(0.01, 0.02, 1, "x", "test")


def test_margins_are_twice_the_largest_error_and_widen_only_upwards():
    m = Margin.from_errors(np.array([0.001, -0.004, 0.002]), "three scores", "test")
    assert (m.margin, m.max_error, m.samples) == (0.008, 0.004, 3)
    band = GuardBand(m, m, m)
    wider = Margin.from_errors(np.array([0.01]), "mine", "validate")
    new, changed = band.widened({"crop_similarity": wider, "itm_probability": Margin.from_errors(np.array([0.0]), "x", "validate")})
    assert changed == ["crop_similarity"] and new.crop_similarity == wider and new.itm_probability == m
    assert GuardBand.from_json(json.loads(json.dumps(new.to_json())), "t") == new


def test_tally_counts_per_score():
    tally = BandTally.empty()
    tally.add("crop_similarity", 3, 1)
    tally.merge({"crop_similarity": {"scored": 2, "rescored": 2}, "itm_probability": {"scored": 4, "rescored": 0}})
    assert tally.to_json() == {"crop_similarity": {"scored": 5, "rescored": 3}, "itm_probability": {"scored": 4, "rescored": 0}}
    assert tally.describe() == "crop_similarity 3/5 (60.0%), itm_probability 0/4 (0.0%)"


# ---- precision and the manifest -----------------------------------------------------------------


def test_banded_is_the_default_and_fastsam_banded_is_fp32():
    assert Precision() == Precision.parse("banded") == Precision.parse({"fastsam": "banded"})
    assert str(Precision()) == "clip=banded,blip=banded,fastsam=fp32"
    assert Precision().banded() == ("clip", "blip") and Precision().needs() == {"int8", "fp32"}
    assert Precision.parse("int8").banded() == () and Precision.parse("int8").for_graph("clip_vision") == "int8"
    assert Precision().for_graph("blip_itm") == "int8"
    with pytest.raises(PrecisionError, match="fp32, int8 or banded"):
        Precision.parse("clip=int4")


def test_the_folder_has_margins_and_a_folder_without_them_runs_int8_unbanded_by_default(tiny_models):
    manifest = mf.read(tiny_models)
    assert manifest.guard_band is not None
    for score in SCORES:
        m = manifest.guard_band.to_json()[score]
        assert m["margin"] == 2 * m["max_error"] and m["samples"] > 0 and m["by"] == "export"
    bare = manifest.with_guard_band(None)  # type: ignore[arg-type]
    precision, origin = resolve_precision(None, bare, tiny_models)
    assert precision == Precision.parse(INT8) and "without its guard band" in origin
    with pytest.raises(ModelFolderError, match="no guard_band margins"):
        resolve_precision("banded", bare, tiny_models)
    assert resolve_precision(None, manifest, tiny_models) == (Precision(), "built-in default")


# ---- the flip tests ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engines(tiny_models):
    pool = SessionPool()
    return {name: ModelSet(tiny_models, precision, pool=pool) for name, precision in (("fp32", "fp32"), ("int8", INT8), ("banded", None))}


def _run(models: ModelSet, pairs: list[PairInput], pair: dict, itm: dict | None = None):
    params = OperatorParams.from_dicts(pair, {"imgsz": 640}, itm or {"min_score": 0.0, "max_score": 1.0})
    engine = DifferenceAreaGenerator(models, params, EngineSettings(threads=1, workers=1, diagnostics=True))
    return list(engine.process_many(pairs, 4))


@pytest.fixture(scope="module")
def open_runs(engines) -> dict[str, list]:
    """fp32 and int8 runs with every gate open and every score kept (diagnostics), once for the module."""
    return {name: _run(engines[name], _pairs(), OPEN) for name in ("fp32", "int8")}


def _pairs() -> list[PairInput]:
    """The real pair, and the same photos the other way round as a second pair of the batch (the
    thresholds come from the first pair's scores; the second shares its batch and its re-scoring)."""
    return [
        PairInput(str(PAIR1), str(PAIR2), objects1=["plane"], objects2=["boat"], key="real"),
        PairInput(str(PAIR2), str(PAIR1), objects1=["boat"], objects2=["plane"], key="reversed"),
    ]


def _between(fp32: dict, int8: dict, margin: float) -> list[tuple[float, float]]:
    """(fp32, int8) scores of the same input that differ by at most the margin, largest first."""
    found = [(fp32[k], int8[k]) for k in fp32.keys() & int8.keys() if 0 < abs(fp32[k] - int8[k]) <= margin]
    return sorted(found, key=lambda fi: -abs(fi[0] - fi[1]))


def _boxes(results) -> list[list]:
    return [r.boxes.tolist() for r in results]


def _crop_gate(threshold: float) -> tuple[dict, dict]:
    return {**OPEN, "max_score_2": threshold}, {"min_score": 0.0, "max_score": 1.0}


def _itm_gate(threshold: float) -> tuple[dict, dict]:
    return OPEN, {"min_score": threshold, "max_score": 1.0}


@pytest.mark.parametrize(("score", "diagnostics", "gates"), [("crop_similarity", "crop_pair", _crop_gate), ("itm_probability", "itm_image1", _itm_gate)])
def test_a_threshold_between_int8_and_fp32_scores(engines, open_runs, score, diagnostics, gates):
    pairs = _pairs()
    ref, quick = open_runs["fp32"], open_runs["int8"]
    margin = engines["banded"].manifest.guard_band.margin(score)
    scores = _between(ref[0].diagnostics[diagnostics], quick[0].diagnostics[diagnostics], margin)
    assert scores, f"no {score} whose int8 and fp32 values differ within the margin"
    flipped = 0
    for fp32, int8 in scores[:6]:
        pair, itm = gates((fp32 + int8) / 2)
        expected = _boxes(_run(engines["fp32"], pairs, pair, itm))
        banded = _run(engines["banded"], pairs, pair, itm)
        assert _boxes(banded) == expected
        assert banded[0].band[score]["rescored"] >= 1  # the candidate's score was in the band
        flipped += _boxes(_run(engines["int8"], pairs, pair, itm)) != expected
    assert flipped, "no threshold made the unbanded int8 run differ: the test could not fail"


def test_pair_threshold_between_int8_and_fp32_similarity(engines, open_runs):
    pairs = _pairs()[:1]
    fp32, int8 = open_runs["fp32"][0].pair_similarity, open_runs["int8"][0].pair_similarity
    margin = engines["banded"].manifest.guard_band.margin("pair_similarity")
    assert 0 < abs(fp32 - int8) <= margin
    gate = {**OPEN, "min_score_1": (fp32 + int8) / 2}
    expected = _run(engines["fp32"], pairs, gate)[0]
    banded = _run(engines["banded"], pairs, gate)[0]
    assert (banded.exit_reason is None, _boxes([banded])) == (expected.exit_reason is None, _boxes([expected]))
    assert banded.band["pair_similarity"] == {"scored": 1, "rescored": 1}
    assert (_run(engines["int8"], pairs, gate)[0].exit_reason is None) != (expected.exit_reason is None)


def test_a_run_far_from_every_threshold_loads_no_fp32_graph(engines):
    # the tiny models' whole-pair similarity is 0.93 and crop-pair ones 0.69-1.0 on these pairs,
    # so no score comes within the margins of -1, 1 or 0.2: every crop fails the crop gate
    gate = {"min_score_1": -1.0, "max_score_1": 1.0, "min_score_2": -1.0, "max_score_2": 0.2}
    engine = DifferenceAreaGenerator(engines["banded"], OperatorParams.from_dicts(gate, {"imgsz": 640}, {}), EngineSettings(threads=1, workers=1))
    results = list(engine.process_many(_pairs(), 2))
    for result in results:
        assert result.band["pair_similarity"] == {"scored": 1, "rescored": 0}
        assert result.band["crop_similarity"]["rescored"] == 0 and result.counts["after_crop_pair_gate"] == 0
    assert engine.fp32.loaded() == []  # so the fp32 graphs were never loaded


# ---- identical crops, distinct pixels ----------------------------------------------------------


def _pasted() -> tuple[np.ndarray, np.ndarray]:
    """A photo and a copy with another photo's patch pasted in, losslessly: most windows are the same pixels."""
    one = load_image_file(PAIR1).rgb
    other = load_image_file(DATA / "images" / "cat.jpg").rgb
    two = one.copy()
    h, w = one.shape[:2]
    two[h // 3 : h // 3 + h // 4, w // 3 : w // 3 + w // 4] = other[: h // 4, : w // 4]
    return one, two


def test_identical_crops_are_decided_without_clip_as_computing_would(tiny_models):
    one, two = _pasted()
    models = ModelSet(tiny_models, "fp32")
    top = 0.99999  # the demo's "too similar" bound: identical crops fail it, computed or not
    params = OperatorParams.from_dicts({**OPEN, "max_score_2": top}, {"imgsz": 640}, {"min_score": 0.0, "max_score": 1.0})
    engine = DifferenceAreaGenerator(models, params, EngineSettings(threads=1, workers=1, diagnostics=True))
    embedded = []
    embed = engine.clip.embed
    engine.clip.embed = lambda images: embedded.append(len(images)) or embed(images)  # type: ignore[method-assign]
    result = engine.process(PairInput(one, two, objects1=["plane"], objects2=["cat"]))
    sims = result.diagnostics["crop_pair"]
    same = [win for win in sims if np.array_equal(crop(one, win), crop(two, win))]
    differ = [win for win in sims if win not in same]
    assert same and differ and result.counts["identical_windows"] == len(same)
    # CLIP ran on the whole pair (2 images) and on the distinct crops of the windows that differ only
    assert sum(embedded) == 2 + len(distinct([(one, w) for w in differ] + [(two, w) for w in differ])[0])
    for win in same:
        computed = float(cosine(embed([crop(one, win)]), embed([crop(two, win)]))[0])
        assert sims[win] == 1.0 and abs(computed - 1.0) < 1e-9  # the evidence, and what CLIP gives
        assert not sims[win] <= top and not computed <= top  # the decision: both too similar
    assert result.counts["after_crop_pair_gate"] == sum(1 for k, w in enumerate(result_windows(result)) if sims.get(w, math.inf) <= top)


def result_windows(result) -> list:
    from imgdiff_onnx.engine.stages.crops import crop_window

    return [crop_window(box) for box in result.candidate_boxes]


def test_the_same_pixels_are_scored_once_in_a_batch(tiny_models):
    one, two = _pasted()
    engine = DifferenceAreaGenerator(ModelSet(tiny_models, "fp32"), OperatorParams.from_dicts(OPEN, {"imgsz": 640}, {"min_score": 0.0, "max_score": 1.0}),
                                     EngineSettings(threads=1, workers=1))  # fmt: skip
    counted = {"clip": 0, "blip": 0}
    clip_embed, blip_encode = engine.clip.embed, engine.blip.encode_images
    engine.clip.embed = lambda images: counted.__setitem__("clip", counted["clip"] + len(images)) or clip_embed(images)  # type: ignore[method-assign]
    engine.blip.encode_images = lambda images: counted.__setitem__("blip", counted["blip"] + len(images)) or blip_encode(images)  # type: ignore[method-assign]
    pair = PairInput(one, two, objects1=["plane"], objects2=["cat"])
    single = engine.process(pair)
    once = dict(counted)
    counted.update(clip=0, blip=0)
    twice = list(engine.process_many([pair, pair], 2))
    assert twice[0] == single and twice[1] == single
    # the second copy's crops are the first's pixels: only its whole-pair gate runs CLIP again
    assert counted == {"clip": once["clip"] + 2, "blip": once["blip"]}


# ---- the run summary, and a folder measured after its export -------------------------------------


def test_the_run_log_totals_the_band_of_its_lines(engines, tmp_path, caplog):
    import logging

    from imgdiff_onnx.runs.jsonl import RunOptions, run

    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps({"image_path1": p.image1, "image_path2": p.image2, "objects1": p.objects1, "objects2": p.objects2}) + "\n"
                            for p in _pairs()))  # fmt: skip
    params = OperatorParams.from_dicts({**OPEN, "max_score_2": 0.99}, {"imgsz": 640}, {})
    engine = DifferenceAreaGenerator(engines["banded"], params, EngineSettings(threads=1, workers=1))
    with caplog.at_level(logging.INFO, logger="imgdiff_onnx"):
        run(engine, data, tmp_path / "out.jsonl", RunOptions(progress=False))
    tally = BandTally.empty()
    for line in (tmp_path / "out.jsonl").read_text().splitlines():
        tally.merge(json.loads(line)["imgdiff"]["band"])
    assert tally.scored["crop_similarity"] > 0
    assert f"re-scored in fp32: {tally.describe()}" in caplog.text


def test_a_folder_without_margins_gets_them_measured(tiny_models, tmp_path):
    import shutil
    import subprocess
    import sys

    folder = tmp_path / "m"
    shutil.copytree(tiny_models, folder, ignore=shutil.ignore_patterns("torch"))
    manifest = mf.read(folder)
    mf.write(folder, manifest.with_guard_band(None))  # type: ignore[arg-type]
    proc = subprocess.run([sys.executable, "-m", "imgdiff_onnx_export.band", "--models", str(folder), "--quiet"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    measured = mf.read(folder).guard_band
    assert measured is not None and measured == manifest.guard_band  # the export's measurement, repeated exactly


def test_the_band_price_says_over_only_when_int8_and_fp32_cost_more_than_fp32_alone():
    from imgdiff_onnx.engine.pipeline import BandPrice

    price = BandPrice()
    price.add(int8_s=1.0, fp32_s=7.9, scored=31, rescored=31)  # every score re-scored, but 31 < MIN_SCORED: no estimate yet
    assert price.fp32_alone() is None and not price.over()
    price.add(0.1, 0.2, 1, 1)  # 32 scored, 32 re-scored: fp32 alone = 8.1 s < 1.1 + 8.1
    assert price.fp32_alone() == pytest.approx(8.1) and price.over()
    cheap = BandPrice(int8_s=2.0, fp32_s=1.0, scored=100, rescored=10)  # 10% re-scored at 0.1 s: fp32 alone 10 s > 3 s
    assert cheap.fp32_alone() == pytest.approx(10.0) and not cheap.over()
    assert not BandPrice(int8_s=9.0, fp32_s=1.0, scored=100, rescored=7).over()  # too few re-scores to estimate fp32's cost
    assert not BandPrice(int8_s=9.0, fp32_s=4.9, scored=100, rescored=49).over()  # int8 slow, but under half re-scored: the band stays
    assert BandPrice(int8_s=9.0, fp32_s=5.0, scored=100, rescored=50).over()


def test_a_band_that_costs_more_than_fp32_switches_to_fp32_with_the_same_decisions(tiny_models, tmp_path, caplog):
    """Margins so wide that every score falls in the band: int8 + fp32 must then cost more than fp32
    alone, so the run switches both models to fp32 once enough scores were seen (BandPrice's
    minimums). The boxes are the fp32 run's and the kept-band run's, pair for pair."""
    import logging
    import shutil

    folder = tmp_path / "models"
    shutil.copytree(tiny_models, folder, ignore=shutil.ignore_patterns("torch"))
    manifest = json.loads((folder / "manifest.json").read_text())
    for score in manifest["guard_band"].values():
        score["margin"] = 5.0  # every score is "near" every threshold
    (folder / "manifest.json").write_text(json.dumps(manifest))
    params = OperatorParams.from_dicts({"min_score_1": -1, "min_score_2": -1, "max_score_2": 0.9999}, {"imgsz": 320}, {"min_score": 0.2})
    pairs = [PairInput(DATA / "images" / "cat.jpg", DATA / "images" / "lena.jpg", objects1=("cat",), objects2=("woman", "hat"), key="q")]
    pairs += [PairInput(PAIR1, PAIR2, objects1=("plane", "sky"), objects2=("boat", "sea"), key=f"p{k}") for k in range(11)]  # enough scores to price the band

    def run(precision: str, switch: bool) -> tuple[list, DifferenceAreaGenerator]:
        engine = DifferenceAreaGenerator(folder, params, EngineSettings(precision=precision, threads=1, band_switch=switch))
        return list(engine.process_many(pairs, pairs_per_batch=2)), engine

    with caplog.at_level(logging.WARNING, logger="imgdiff_onnx"):
        switched, engine = run("banded", True)
    kept, kept_engine = run("banded", False)
    fp32, _ = run("fp32", True)
    assert engine.fp32_instead == {"clip", "blip"} and kept_engine.fp32_instead == set()
    assert engine.clip is engine.fp32.clip and engine.blip is engine.fp32.blip  # the int8 graphs are no longer used
    assert sum("runs fp32 from now on (the same decisions)" in r.getMessage() for r in caplog.records) == 2  # once per model
    for a, b, c in zip(switched, kept, fp32):
        np.testing.assert_array_equal(a.boxes, c.boxes)
        np.testing.assert_array_equal(b.boxes, c.boxes)
        assert a.kept == b.kept == c.kept and [e.word1 for e in a.evidence] == [e.word1 for e in c.evidence]
    assert switched[0].band is not None and switched[-1].band is None  # banded in the first batch, fp32 after the switch
    assert any(len(r.boxes) for r in fp32)  # the comparison has boxes to compare
