"""The engine: decisions D1-D5, bad input, batching invariance, and the torch-free runtime."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from imgdiff_onnx import DifferenceAreaGenerator, EngineSettings, OperatorParams, PairFailure, PairInput, ParameterError
from imgdiff_onnx.engine.pipeline import PairError, crop_window

from .conftest import DATA, PAIR1, PAIR2, PAIR_CAPTIONS

OPEN = OperatorParams.from_dicts({"min_score_1": -1, "min_score_2": -1, "max_score_2": 1}, {"imgsz": 640}, {"min_score": 0, "max_score": 1})


@pytest.fixture(scope="module")
def engine(tiny_models):
    return DifferenceAreaGenerator(tiny_models, OPEN, EngineSettings(precision="fp32", threads=2))


@pytest.fixture(scope="module")
def engine_int8(tiny_models):
    return DifferenceAreaGenerator(tiny_models, OPEN, EngineSettings(precision="int8", threads=2, crop_batch_size=4))


def test_runtime_imports_no_torch_and_no_nltk(tiny_models):
    code = (
        "import sys\n"
        "from imgdiff_onnx import DifferenceAreaGenerator, PairInput, OperatorParams, EngineSettings\n"
        f"g = DifferenceAreaGenerator(r'{tiny_models}', OperatorParams.from_dicts(None, {{'imgsz': 320}}, None))\n"
        f"r = g.process(PairInput(r'{PAIR1}', r'{PAIR2}', *{PAIR_CAPTIONS!r}))\n"
        "assert r.objects1 == ['plane', 'sky'], r.objects1\n"
        "heavy = [m for m in ('torch', 'transformers', 'ultralytics', 'torchvision', 'nltk', 'sklearn', 'scipy') if m in sys.modules]\n"
        "print('HEAVY', heavy, r.boxes.shape)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout


def test_every_runtime_package_is_installed_by_a_wheel():
    """pyproject lists packages by hand: a sub-package missing there works in an editable
    install and is absent from a wheel."""
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(root).parts) for p in (root / "imgdiff_onnx").rglob("__init__.py")}
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"


def test_result_shape_and_diagnostics(engine):
    r = engine.process(PairInput(PAIR1, PAIR2, *PAIR_CAPTIONS))
    assert r.boxes.dtype == np.float32 and r.boxes.ndim == 2 and r.boxes.shape[1] == 4
    assert r.objects1 == ["plane", "sky"] and r.objects2 == ["boat", "ocean"]
    assert r.pair_similarity is not None
    c = r.counts
    assert c["candidates"] == c["boxes1"] + c["boxes2"] > 0
    assert c["candidates"] >= c["after_crop_pair_gate"] >= c["after_itm_image1"] >= c["after_itm_image2"] >= c["kept"] == len(r.boxes)
    assert set(r.times) >= {"load", "captions", "pair_gate", "segment", "crop_pair_gate", "itm_image1", "itm_image2", "overlap"}
    # S8: kept boxes are candidate boxes in candidate order
    assert r.kept == sorted(r.kept)
    np.testing.assert_array_equal(r.boxes, r.candidate_boxes[r.kept])


def test_early_exits(engine, tiny_models):
    r = engine.process(PairInput(PAIR1, PAIR2, "A red car.", "A red car."))
    assert r.exit_reason.startswith("no object words") and r.boxes.shape == (0, 4)
    closed = DifferenceAreaGenerator(tiny_models, OperatorParams.from_dicts({"min_score_1": 0.99999, "max_score_1": 1.0}), EngineSettings(precision="fp32"))
    r = closed.process(PairInput(PAIR1, DATA / "images/lena.jpg", *PAIR_CAPTIONS))
    assert r.exit_reason.startswith("pair similarity") and r.boxes.shape == (0, 4) and "segment" not in r.times


def test_explicit_objects_skip_captions(engine):
    r = engine.process(PairInput(PAIR1, PAIR2, objects1=("plane",), objects2=("boat",)))
    assert r.objects1 == ["plane"] and r.objects2 == ["boat"]


def test_d1_image2_is_resized_to_image1_before_segmentation(engine):
    """A pair of different sizes gives the boxes of the same pair with image 2 pre-resized."""
    import cv2

    rgb1 = np.asarray(Image.open(PAIR1).convert("RGB"))
    rgb2 = np.asarray(Image.open(PAIR2).convert("RGB"))
    small2 = cv2.resize(rgb2, (600, 450), interpolation=cv2.INTER_AREA)
    a = engine.process(PairInput(rgb1, small2, *PAIR_CAPTIONS))
    b = engine.process(PairInput(rgb1, cv2.resize(small2, (1024, 1024), interpolation=cv2.INTER_LINEAR), *PAIR_CAPTIONS))
    np.testing.assert_array_equal(a.candidate_boxes, b.candidate_boxes)
    np.testing.assert_array_equal(a.boxes, b.boxes)
    assert a.candidate_boxes[:, [0, 2]].max() <= 1024 * 1.5  # image-1 pixels


def test_d2_jpeg_roundtrip_option_changes_only_crop_pixels(tiny_models):
    """The round trip changes what the crops' scores see, and nothing before the crops: the same
    pair similarity and candidates, other crop-pair and ITM scores (kept, so every one compares)."""
    plain, compat = (DifferenceAreaGenerator(tiny_models, OPEN, EngineSettings(precision="fp32", jpeg_roundtrip=j, keep_scores=True)) for j in (False, True))
    a = plain.process(PairInput(PAIR1, PAIR2, *PAIR_CAPTIONS))
    b = compat.process(PairInput(PAIR1, PAIR2, *PAIR_CAPTIONS))
    np.testing.assert_array_equal(a.candidate_boxes, b.candidate_boxes)
    assert a.pair_similarity == b.pair_similarity and len(a.scores.crop) > 0
    assert not np.array_equal(a.scores.crop[:, 0], b.scores.crop[:, 0])  # the crops went through JPEG: their scores moved
    assert not np.array_equal(a.scores.itm1[..., 0], b.scores.itm1[..., 0])


def test_crops_are_cut_when_read_and_match_the_windows(engine):
    from imgdiff_onnx.engine.stages.crops import Crops, crop, jpeg_roundtrip

    rgb = np.asarray(Image.open(PAIR1).convert("RGB"))
    windows = [(0, 10, 0, 20), (100, 300, 50, 90), (-5, 40, 3, 7)]  # a negative start wraps, as in the original
    crops = Crops([(rgb, w) for w in windows])
    assert len(crops) == 3
    for k, w in enumerate(windows):
        np.testing.assert_array_equal(crops[k], crop(rgb, w))
        assert crops[k].flags.c_contiguous
    chunk = crops[1:3]
    assert isinstance(chunk, list) and len(chunk) == 2
    np.testing.assert_array_equal(chunk[0], crop(rgb, windows[1]))
    jpeg = Crops([(rgb, windows[1])], jpeg=True)
    np.testing.assert_array_equal(jpeg[0], jpeg_roundtrip(np.ascontiguousarray(crop(rgb, windows[1]))))
    assert not np.array_equal(jpeg[0], crops[1])  # the round trip changes pixels


@pytest.mark.parametrize("which", ["engine", "engine_int8"])
def test_itm_scores_rows_of_the_embeddings_as_their_copy_would_score(request, which, tiny_models):
    engine = request.getfixturevalue(which)
    rgb = np.asarray(Image.open(PAIR1).convert("RGB"))
    crops = [np.ascontiguousarray(rgb[r : r + 200, c : c + 150]) for r, c in ((0, 0), (300, 200), (500, 600), (100, 700))]
    embeds = engine.blip.encode_images(crops)
    for rows in ([2, 0], [1, 2, 3], [3]):
        np.testing.assert_array_equal(engine.blip.score(embeds, "plane", rows), engine.blip.score(embeds[rows], "plane"))
    np.testing.assert_array_equal(engine.blip.score(embeds, "plane"), engine.blip.score(embeds, "plane", [0, 1, 2, 3]))


def test_d4_degenerate_crops_fail():
    assert crop_window(np.array([10.2, 10.2, 0.3, 0.3], np.float32)) == (10, 10, 10, 10)
    assert crop_window(np.array([5.0, 7.0, 4.0, 2.0], np.float32)) == (6, 8, 3, 7)


def test_d4_tiny_image_does_not_crash(engine):
    one = np.full((1, 1, 3), 200, np.uint8)
    r = engine.process(PairInput(one, one.copy(), *PAIR_CAPTIONS))
    assert r.boxes.shape[1] == 4
    assert r.counts.get("after_crop_pair_gate", 0) <= r.counts.get("candidates", 0) - r.counts.get("degenerate", 0)


@pytest.mark.parametrize(
    "pair,message",
    [
        (PairInput(PAIR1, PAIR1, *PAIR_CAPTIONS, key="r1"), "same file"),
        (PairInput(PAIR1, DATA / "nope.jpg", *PAIR_CAPTIONS, key="r2"), "image not found"),
        (PairInput(PAIR1, PAIR2, None, "x", key="r3"), "caption1 is missing"),
        (PairInput(PAIR1, PAIR2, "a cat", 5, key="r4"), "caption2 must be a string"),
        (PairInput(PAIR1, PAIR2, objects1=("cat",), key="r5"), "given together"),
        (PairInput(PAIR1, np.zeros((4, 4, 3), np.float32), *PAIR_CAPTIONS, key="r6"), "uint8"),
    ],
)
def test_bad_records_raise_pair_error_naming_the_record(engine, pair, message):
    with pytest.raises(PairError, match=message) as info:
        engine.process(pair)
    assert info.value.key == pair.key


def test_bad_files(engine, tmp_path):
    (tmp_path / "text.jpg").write_text("not an image")
    data = PAIR1.read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 3])
    # "could not decode": when ultralytics was imported in this process it patches PIL.Image.open
    for name, message in (("text.jpg", "not an image|could not decode"), ("truncated.jpg", "truncated")):
        with pytest.raises(PairError, match=message):
            engine.process(PairInput(PAIR1, tmp_path / name, *PAIR_CAPTIONS, key=name))


def test_image_modes_are_normalised(engine, tmp_path):
    rgb = np.asarray(Image.open(DATA / "images/cat.jpg").convert("RGB"))
    img = Image.fromarray(rgb)
    variants = {
        "grey.png": img.convert("L"),
        "rgba.png": img.convert("RGBA"),
        "palette.png": img.convert("P"),
        "cmyk.jpg": img.convert("CMYK"),
        "grey16.png": Image.fromarray((np.asarray(img.convert("L")).astype(np.uint16) * 257)),
    }
    rotated = img.copy()
    exif = rotated.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    rotated.save(tmp_path / "exif.jpg", exif=exif)
    for name, image in variants.items():
        image.save(tmp_path / name)
    from imgdiff_onnx.imageio import load_image_file

    assert load_image_file(tmp_path / "exif.jpg").shape == (640, 480)  # EXIF orientation applied
    assert load_image_file(tmp_path / "grey16.png").rgb.max() <= 255
    np.testing.assert_array_equal(load_image_file(tmp_path / "grey16.png").rgb, load_image_file(tmp_path / "grey.png").rgb)
    # every mode through S1-S6 (BLIP is the same for all of them: the crop gate passes nothing)
    shut = OperatorParams.from_dicts({"min_score_1": -1, "min_score_2": -1, "max_score_2": -1}, {"imgsz": 640}, {"min_score": 0})
    gated = DifferenceAreaGenerator(engine.models, shut, EngineSettings(precision="fp32", threads=2))
    for name in list(variants) + ["exif.jpg"]:
        r = gated.process(PairInput(DATA / "images/cat.jpg", tmp_path / name, "A cat.", "A dog.", key=name))
        assert r.boxes.shape == (0, 4) and r.exit_reason is None and r.counts["candidates"] > 0, (name, r.counts)


def test_process_many_keeps_order_and_reports_failures(engine):
    pairs = [
        PairInput(PAIR1, PAIR2, *PAIR_CAPTIONS, key="a"),
        PairInput(PAIR1, PAIR1, *PAIR_CAPTIONS, key="bad"),
        PairInput(DATA / "images/cat.jpg", DATA / "images/img3.jpg", "A cat on a bed.", "A dog on a bed.", key="c"),
    ]
    out = list(engine.process_many(pairs, pairs_per_batch=3))
    assert [o.key for o in out] == ["a", "bad", "c"]
    assert isinstance(out[1], PairFailure) and "same file" in out[1].error
    single = [engine.process(pairs[0]), engine.process(pairs[2])]
    for batched, alone in zip([out[0], out[2]], single):
        np.testing.assert_allclose(batched.boxes, alone.boxes, atol=1e-4)
        assert batched.kept == alone.kept


def test_int8_results_do_not_depend_on_batching(tiny_models, engine_int8):
    pairs = [PairInput(PAIR1, PAIR2, *PAIR_CAPTIONS, key="a"), PairInput(DATA / "images/cat.jpg", DATA / "images/img3.jpg", "A cat.", "A dog.", key="b")]
    other = DifferenceAreaGenerator(tiny_models, OPEN, EngineSettings(precision="int8", threads=1, crop_batch_size=1))
    a = list(engine_int8.process_many(pairs, pairs_per_batch=2))
    b = [other.process(p) for p in pairs]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.boxes, y.boxes)
        assert x.kept == y.kept


def test_parameters_reject_unknown_keys_and_bad_values():
    with pytest.raises(ParameterError, match="unknown key"):
        OperatorParams.from_dicts({"min_score1": 0.2})
    with pytest.raises(ParameterError, match="greater than"):
        OperatorParams.from_dicts(None, None, {"min_score": 0.9, "max_score": 0.1})
    with pytest.raises(ParameterError, match="imgsz"):
        OperatorParams.from_dicts(None, {"imgsz": "big"})
    p = OperatorParams.from_dicts({"min_score_1": 0.9}, None, {"min_score": 0.4})
    assert p.pair.min_score_1 == 0.9 and p.pair.max_score_1 == 1.0 and p.matching.min_score == 0.4
    assert p.segment.imgsz == 1024 and p.segment.conf == 0.05 and p.pair.hf_clip == "openai/clip-vit-base-patch32"


def _png_header_only(path, width: int, height: int) -> None:
    """A PNG whose header claims width x height (no pixel data): tests the size check without the RAM."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("width,height", [(40_000, 30_000), (12_000, 10_000)])
def test_image_over_the_pixel_limit_is_refused_before_decoding(engine, tmp_path, width, height):
    from imgdiff_onnx.imageio import MAX_IMAGE_PIXELS

    huge = tmp_path / "huge.png"
    _png_header_only(huge, width, height)  # 1.2 / 0.12 gigapixels claimed, 3.6 / 0.36 GB if decoded
    assert width * height > MAX_IMAGE_PIXELS
    with pytest.raises(PairError, match=r"image 2: image too large: .*huge\.png") as info:
        engine.process(PairInput(PAIR1, huge, *PAIR_CAPTIONS, key="huge"))
    assert info.value.key == "huge"


def test_very_large_image_pair_is_processed_in_image1_pixels(tiny_models):
    # 24 megapixels, far above imgsz: segmentation runs on the letterboxed copies, boxes come back
    # in full-resolution image-1 pixels. The two images are the same pixels and the crop gate's
    # upper bound is below 1, so every window is decided without a model (D6): the test pays for
    # FastSAM on two 24-megapixel images, not for hundreds of full-resolution crops.
    from imgdiff_onnx import samples

    s = samples.pair(11, 512, 768)
    big1 = np.ascontiguousarray(np.kron(s.image1, np.ones((8, 8, 1), np.uint8)))  # 4096 x 6144
    assert big1.shape == (4096, 6144, 3)
    params = OperatorParams.from_dicts({"min_score_1": -1, "min_score_2": -1, "max_score_2": 0.99}, {"imgsz": 640}, {"min_score": 0})
    engine = DifferenceAreaGenerator(tiny_models, params, EngineSettings(precision="fp32", threads=2))
    r = engine.process(PairInput(big1, big1.copy(), objects1=(s.object1,), objects2=(s.object2,), key="big"))
    assert r.counts["identical_windows"] == r.counts["unique_windows"]
    assert r.exit_reason is None and r.counts["candidates"] > 0
    boxes = r.candidate_boxes
    x0, y0 = boxes[:, 0] - boxes[:, 2] / 2, boxes[:, 1] - boxes[:, 3] / 2
    x1, y1 = boxes[:, 0] + boxes[:, 2] / 2, boxes[:, 1] + boxes[:, 3] / 2
    assert x0.min() >= -0.5 and y0.min() >= -0.5 and x1.max() <= 6144.5 and y1.max() <= 4096.5
    assert x1.max() > 768 or y1.max() > 512  # really in full-resolution pixels, not letterbox ones


@pytest.mark.parametrize("arena,pattern", [(False, False), (True, False), (False, True)])
def test_memory_settings_reach_every_session(tiny_models, arena, pattern):
    gen = DifferenceAreaGenerator(tiny_models, OPEN, EngineSettings(threads=1, memory_arena=arena, memory_pattern=pattern, fastsam_arena=False))
    sessions = [gen.clip._session, gen.blip._vision, gen.blip._itm, gen.segmenter._session]
    assert [s.get_session_options().enable_cpu_mem_arena for s in sessions] == [arena] * 4
    assert [s.get_session_options().enable_mem_pattern for s in sessions] == [pattern] * 4


def _threads_and_arena(session) -> tuple[int, bool, str]:
    options = session.get_session_options()
    try:
        shared = options.get_session_config_entry("session.use_env_allocators")
    except RuntimeError:  # onnxruntime: "does not have configuration with key"
        shared = ""
    return options.intra_op_num_threads, options.enable_cpu_mem_arena, shared


@pytest.mark.parametrize("together", [False, True])
@pytest.mark.parametrize("workers,threads", [(2, 1), (1, 2), (2, 2)])
def test_fastsam_runs_on_every_core_one_image_at_a_time_in_the_shrinking_arena(tiny_models, together, workers, threads):
    gen = DifferenceAreaGenerator(tiny_models, OPEN, EngineSettings(workers=workers, threads=threads, segment_together=together))
    try:
        fastsam_threads = threads if together else workers * threads
        assert _threads_and_arena(gen.segmenter._session) == (fastsam_threads, True, "1")
        assert gen.segmenter._run_options is not None
        assert gen.segmenter._run_options.get_run_config_entry("memory.enable_memory_arena_shrinkage") == "cpu:0"
        for other in (gen.clip._session, gen.blip._vision, gen.blip._itm):
            assert _threads_and_arena(other) == (threads, False, "")
    finally:
        gen.close()
    plain = DifferenceAreaGenerator(tiny_models, OPEN, EngineSettings(workers=workers, threads=threads, fastsam_arena=False))
    assert _threads_and_arena(plain.segmenter._session)[1:] == (False, "") and plain.segmenter._run_options is None
    plain.close()


def test_memory_defaults_arena_off_pattern_on():
    s = EngineSettings()
    assert s.memory_arena is False and s.memory_pattern is True and s.fastsam_arena is True and s.segment_together is False and s.warm_up is True


def test_fastsam_in_the_shrinking_arena_writes_its_outputs_into_arrays_of_ours(tiny_models):
    """The first run of an input shape is an ordinary run (it gives the output shapes); later runs
    of that shape go through IOBinding into fresh arrays: the same numbers, arrays that own their
    memory, nothing of onnxruntime's allocator left alive after the run."""
    gen = DifferenceAreaGenerator(tiny_models, OPEN, EngineSettings(threads=1, precision="fp32"))
    plain = DifferenceAreaGenerator(tiny_models, OPEN, EngineSettings(threads=1, precision="fp32", fastsam_arena=False))
    try:
        session = gen.segmenter._session
        calls = {"run": 0, "run_with_iobinding": 0}

        class Counting:
            def __getattr__(self, name):
                if name in calls:
                    calls[name] += 1
                return getattr(session, name)

        gen.segmenter._session = Counting()
        image = cv2.imread(PAIR1)
        small = cv2.resize(image, (320, 240))
        runs = [gen.segmenter.segment(im, 640, 0.05, 0.5) for im in (image, image, small, image, small)]
        assert calls == {"run": 2, "run_with_iobinding": 3}  # one ordinary run per letterbox shape
        want = [plain.segmenter.segment(im, 640, 0.05, 0.5) for im in (image, small)]
        for got, ref in zip(runs, [want[0], want[0], want[1], want[0], want[1]]):
            np.testing.assert_array_equal(got.xywh, ref.xywh)
            np.testing.assert_array_equal(got.scores, ref.scores)
        letterboxed = np.zeros((1, 3, 640, 640), np.float32)
        first, second = gen.segmenter._network(letterboxed), gen.segmenter._network(letterboxed)
        for a, b in zip(first, second):
            np.testing.assert_array_equal(a, b)
            assert b.flags.owndata and b.flags.c_contiguous
    finally:
        gen.close()
        plain.close()


def test_an_onnxruntime_error_in_a_bound_run_names_the_graph():
    from imgdiff_onnx.errors import ModelRunError
    from imgdiff_onnx.engine.models.batching import OwnOutputs

    class Session:
        def run(self, outputs, feeds, run_options=None):
            return [np.zeros((1, 2), np.float32)]

        def io_binding(self):
            raise ort.capi.onnxruntime_pybind11_state.InvalidArgument("bad binding")

    runner = OwnOutputs("fastsam", ["predictions"])
    feeds = {"images": np.zeros((1, 3, 32, 32), np.float32)}
    assert runner.run(Session(), feeds, None)[0].shape == (1, 2)
    with pytest.raises(ModelRunError, match=r"fastsam graph: InvalidArgument: bad binding \(inputs images \(1, 3, 32, 32\)\)"):
        runner.run(Session(), feeds, None)


def test_blip_vision_is_warmed_up_at_load_unless_asked_not_to(tiny_models, monkeypatch):
    from imgdiff_onnx.engine.models.blip import BlipMatcher

    seen: list[int] = []
    original = BlipMatcher.encode_images
    monkeypatch.setattr(BlipMatcher, "encode_images", lambda self, images: seen.append(len(images)) or original(self, images))
    DifferenceAreaGenerator(tiny_models, OPEN, EngineSettings(threads=1)).close()
    assert seen == [1]
    DifferenceAreaGenerator(tiny_models, OPEN, EngineSettings(threads=1, warm_up=False)).close()
    assert seen == [1]


# ---- result objects and per-box evidence -------------------------------------------------------


def _open_engine(tiny_models, diagnostics: bool = False) -> DifferenceAreaGenerator:
    params = OperatorParams.from_dicts({"min_score_1": -1, "min_score_2": -1}, {"imgsz": 320}, {"min_score": 0.0})
    return DifferenceAreaGenerator(tiny_models, params, EngineSettings(precision="fp32", threads=1, diagnostics=diagnostics))


def _evidence_pairs():
    a, b, c = (str(DATA / p) for p in ("pairs/img_pair_1.jpg", "pairs/img_pair_2.jpg", "images/cat.jpg"))
    return [
        PairInput(a, b, objects1=("plane", "sky"), objects2=("boat", "ocean"), key="p1"),
        PairInput(c, b, objects1=("sky", "cat"), objects2=("ocean",), key="p2"),
        PairInput(b, a, objects1=("boat",), objects2=("sky", "plane"), key="p3"),
    ]


def test_each_box_carries_the_evidence_that_kept_it(tiny_models):
    engine = _open_engine(tiny_models, diagnostics=True)
    results = list(engine.process_many(_evidence_pairs(), pairs_per_batch=3))
    checked = 0
    for pair, r in zip(_evidence_pairs(), results):
        assert len(r.evidence) == len(r.boxes) == len(r.kept)
        for k, e in zip(r.kept, r.evidence):
            win = crop_window(r.candidate_boxes[k])
            assert e.candidate == k and e.source == (1 if k < r.counts["boxes1"] else 2)
            np.testing.assert_array_equal(r.candidate_boxes[e.candidate], r.boxes[r.evidence.index(e)])
            assert e.crop_similarity == r.diagnostics["crop_pair"][win]
            for side, word, prob, objects in ((1, e.word1, e.itm1, pair.objects1), (2, e.word2, e.itm2, pair.objects2)):
                scores = r.diagnostics[f"itm_image{side}"]
                assert prob == scores[(win, word)]
                # the first word of the list that passes (min_score 0: the very first word)
                assert word == objects[0]
            checked += 1
    assert checked > 0, "no box kept: the test checks nothing"


def test_results_do_not_depend_on_which_pairs_share_a_batch(tiny_models):
    engine = _open_engine(tiny_models)
    together = list(engine.process_many(_evidence_pairs(), pairs_per_batch=3))
    alone = list(engine.process_many(_evidence_pairs(), pairs_per_batch=1))
    assert together == alone
    assert [r.to_json() for r in together] == [r.to_json() for r in alone]


def test_first_passing_word_is_taken_in_each_crops_own_order(tiny_models):
    # min_score between the two words' probabilities: the crop's later word passes
    engine = _open_engine(tiny_models, diagnostics=True)
    r = engine.process(_evidence_pairs()[0])
    assert r.evidence
    scores = r.diagnostics["itm_image1"]
    win = crop_window(r.candidate_boxes[r.kept[0]])
    p_plane, p_sky = scores[(win, "plane")], scores.get((win, "sky"))
    assert p_sky is None  # stopped at "plane", the first word, which passed
    threshold = OperatorParams.from_dicts({"min_score_1": -1, "min_score_2": -1}, {"imgsz": 320}, {"min_score": float(p_plane) + 1e-6, "max_score": 1.0})
    strict = DifferenceAreaGenerator(tiny_models, threshold, EngineSettings(precision="fp32", threads=1, diagnostics=True)).process(_evidence_pairs()[0])
    for k, e in zip(strict.kept, strict.evidence):
        w = crop_window(strict.candidate_boxes[k])
        tried = [word for word in ("plane", "sky") if (w, word) in strict.diagnostics["itm_image1"]]
        assert tried[-1] == e.word1 and tried == ["plane", "sky"][: len(tried)]
        assert e.itm1 >= threshold.matching.min_score


def test_pair_result_repr_dict_json_equality_and_plot(tiny_models):
    import json as _json

    engine = _open_engine(tiny_models)
    r = engine.process(_evidence_pairs()[0])
    text = repr(r)
    assert len(text) < 300 and text.startswith("PairResult(key='p1', boxes=") and "candidates" in text
    d = r.to_dict()
    assert d["status"] == "ok" and len(d["boxes"]) == len(d["evidence"]) == len(r.boxes)
    assert _json.loads(r.to_json()) == d
    if d["evidence"]:
        assert set(d["evidence"][0]) == {"candidate", "source", "word1", "itm1", "word2", "itm2", "crop_similarity"}
    again = engine.process(_evidence_pairs()[0])
    assert r == again and not (r != again)
    again.boxes = again.boxes + 1
    assert r != again
    picture = r.plot()
    h, w = cv2.imread(str(DATA / "pairs/img_pair_1.jpg")).shape[:2]
    assert picture.shape == (h, 2 * w + 8, 3) and picture.dtype == np.uint8


def test_no_object_words_says_which_words_were_compared(tiny_models):
    engine = _open_engine(tiny_models)
    a, b = str(DATA / "pairs/img_pair_1.jpg"), str(DATA / "pairs/img_pair_2.jpg")
    r = engine.process(PairInput(a, b, "A red car on the road.", "A blue car on the road.", key="colours"))
    assert r.objects1 == [] and r.exit_reason == (
        "no object words in caption 1: its differing words 'red' (adjective) are not nouns found only in it"
    )
    r = engine.process(PairInput(a, b, "A cat.", "A cat.", key="same"))
    assert r.exit_reason == "no object words in caption 1: it has no word that caption 2 lacks (only nouns that differ are compared)"


def test_a_generator_shared_by_threads_runs_their_calls_one_at_a_time_with_the_sequential_results(tiny_models):
    import threading
    from concurrent.futures import ThreadPoolExecutor

    params = OperatorParams.from_dicts({"min_score_1": -1, "min_score_2": -1}, {"imgsz": 320}, {"min_score": 0})
    gen = DifferenceAreaGenerator(tiny_models, params, EngineSettings())
    images = [PAIR1, PAIR2, DATA / "images" / "cat.jpg", DATA / "images" / "img3.jpg"]
    pairs = [PairInput(images[i % 4], images[(i + 1) % 4], objects1=("cat",), objects2=("dog",), key=f"p{i}") for i in range(6)]
    sequential = [gen.process(p) for p in pairs]
    active, most, guard = [0], [0], threading.Lock()
    prepare = gen._prepare

    def counted(pair):  # how many calls are inside the engine at once
        with guard:
            active[0] += 1
            most[0] = max(most[0], active[0])
        try:
            threading.Event().wait(0.02)  # give another thread the chance to enter
            return prepare(pair)
        finally:
            with guard:
                active[0] -= 1

    gen._prepare = counted
    with ThreadPoolExecutor(4) as pool:
        single = list(pool.map(gen.process, pairs))
        many = list(pool.map(lambda chunk: list(gen.process_many(chunk, pairs_per_batch=2)), [pairs[:3], pairs[3:]]))
    assert single == sequential and [r for chunk in many for r in chunk] == sequential
    assert most[0] == 1
    gen.close()
