"""Preprocessing against the real Hugging Face processors and Ultralytics' LetterBox."""

from __future__ import annotations

import numpy as np
import pytest

from imgdiff_onnx.imageio import load_image_file
from imgdiff_onnx.engine.preprocess import ImageNormalization, LetterboxSettings, letterbox, normalize_batch, normalize_image, rescale_and_normalize

from .conftest import DATA

IMAGES = ["pairs/img_pair_1.jpg", "images/cat.jpg", "images/img3.jpg", "images/img8.jpg", "images/lena.jpg"]
MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
CLIP = ImageNormalization(224, None, None, 224, 224, "bicubic", 1 / 255, MEAN, STD)
BLIP = ImageNormalization(None, 384, 384, None, None, "bicubic", 1 / 255, MEAN, STD)


def _crops(rgb):
    """Whole image plus odd crops (thin, tiny, smaller than the crop size)."""
    h, w = rgb.shape[:2]
    return [rgb, rgb[10 : h // 2, 5 : w // 3], rgb[:7, :300], rgb[:100, :3], rgb[50:60, 50:61]]


@pytest.mark.parametrize("name", IMAGES)
@pytest.mark.parametrize("model", ["clip", "blip"])
def test_matches_hf_pil_processor(name, model):
    from transformers import BlipImageProcessorPil, CLIPImageProcessorPil

    processor, norm = (CLIPImageProcessorPil(), CLIP) if model == "clip" else (BlipImageProcessorPil(), BLIP)
    rgb = load_image_file(DATA / name).rgb
    for crop in _crops(rgb):
        expected = processor(images=crop, return_tensors="np")["pixel_values"][0]
        np.testing.assert_allclose(normalize_image(np.ascontiguousarray(crop), norm), expected, atol=1e-5)


@pytest.mark.parametrize("norm", [CLIP, BLIP], ids=["clip", "blip"])
def test_value_lookup_gives_the_arithmetic_bit_for_bit(norm):
    # an image that is already at the output size (no resize, no crop) holding every uint8
    # value in every channel, in different orders per channel: every table entry is checked
    h, w = norm.output_size
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    image.reshape(-1, 3)[:256] = np.stack([np.arange(256), np.arange(256)[::-1], (np.arange(256) * 7) % 256], axis=1)
    expected = rescale_and_normalize(image, norm.rescale_factor, norm.mean, norm.std).transpose(2, 0, 1)
    ours = normalize_image(image, norm)
    assert ours.dtype == np.float32 and ours.flags.c_contiguous and ours.shape == (3, h, w)
    np.testing.assert_array_equal(ours.view(np.uint32), np.ascontiguousarray(expected).view(np.uint32))


def test_batch_is_written_in_place_with_the_single_image_values():
    rgb = load_image_file(DATA / "images/cat.jpg").rgb
    crops = [np.ascontiguousarray(c) for c in _crops(rgb)]
    batch = normalize_batch(crops, CLIP)
    assert batch.shape == (len(crops), 3, 224, 224) and batch.dtype == np.float32
    np.testing.assert_array_equal(batch.view(np.uint32), np.stack([normalize_image(c, CLIP) for c in crops]).view(np.uint32))
    with pytest.raises(ValueError, match=r"out must be float32 \(3, 224, 224\)"):
        normalize_image(crops[0], CLIP, out=np.empty((3, 384, 384), dtype=np.float32))


def test_saved_preprocessed_image_fixture(tmp_path):
    """Golden values: CLIP input of the real pair image, a few pixels pinned from the HF processor."""
    from transformers import CLIPImageProcessorPil

    rgb = load_image_file(DATA / "pairs/img_pair_1.jpg").rgb
    ours = normalize_image(rgb, CLIP)
    hf = CLIPImageProcessorPil()(images=rgb, return_tensors="np")["pixel_values"][0]
    assert ours.shape == (3, 224, 224)
    np.testing.assert_allclose(ours[:, ::37, ::53], hf[:, ::37, ::53], atol=1e-5)


@pytest.mark.parametrize("name", IMAGES + ["images/img10.jpg"])
@pytest.mark.parametrize("imgsz", [1024, 640, 333])
def test_letterbox_matches_ultralytics(name, imgsz):
    from ultralytics.data.augment import LetterBox

    bgr = load_image_file(DATA / name).bgr
    expected = LetterBox(imgsz, auto=True, stride=32)(image=bgr)
    ours = letterbox(bgr, imgsz, LetterboxSettings())
    assert ours.tensor.shape[2:] == expected.shape[:2]
    if imgsz % 32 == 0:
        assert ours.tensor.shape[2] % 32 == 0 and ours.tensor.shape[3] % 32 == 0
    np.testing.assert_array_equal((ours.tensor[0] * 255).round().astype(np.uint8), expected[:, :, ::-1].transpose(2, 0, 1))


def test_predictor_imgsz_rounds_up_to_the_stride():
    from ultralytics.utils.checks import check_imgsz

    from imgdiff_onnx.engine.models.fastsam import predictor_imgsz

    for imgsz in (32, 333, 640, 1000, 1024, 1025):
        assert predictor_imgsz(imgsz, 32) == check_imgsz(imgsz, stride=32, min_dim=2)[0]


def test_letterbox_minimal_padding_not_square():
    bgr = np.zeros((480, 640, 3), np.uint8)
    out = letterbox(bgr, 1024, LetterboxSettings())
    assert out.tensor.shape == (1, 3, 768, 1024)  # 480 * 1.6 = 768, already a multiple of 32
    assert out.tensor[0, :, 0, 0] == pytest.approx([0, 0, 0])


def test_bad_image_arrays_rejected():
    with pytest.raises(ValueError):
        normalize_image(np.zeros((0, 5, 3), np.uint8), CLIP)
    with pytest.raises(ValueError):
        normalize_image(np.zeros((5, 5), np.uint8), CLIP)
