"""Run every exported graph against its PyTorch module on real images; figures for the manifest.

fp32 graphs must match PyTorch within the tolerances below or the export fails. int8 graphs are
compared with the fp32 graphs and reported (quantization error is a measured property, not a
pass/fail criterion here; the runtime parity tests and benchmarks report its effect on boxes).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from imgdiff_onnx.engine import boxes as bx
from imgdiff_onnx.errors import ExportError
from imgdiff_onnx.engine.models.batching import map_chunks, run_graph
from imgdiff_onnx.engine.models.blip import match_probability
from imgdiff_onnx.engine.models.clip import cosine
from imgdiff_onnx.engine.models.fastsam import FastSamSegmenter, postprocess
from imgdiff_onnx.engine.modelset import SessionSettings, create_session
from imgdiff_onnx.engine.preprocess import LetterboxSettings, letterbox

from .fastsam import raw_outputs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tolerances:
    """fp32 ONNX vs PyTorch, same inputs."""

    min_cosine: float = 0.9999  # embeddings (CLIP projected features, BLIP image tokens)
    max_itm_prob_diff: float = 1e-3  # |p_itm(onnx) - p_itm(torch)|
    min_box_f1: float = 0.98  # FastSAM boxes after post-processing, matched at IoU 0.9


TOLERANCES = Tolerances()
ITM_WORDS = ("plane", "boat", "traffic light", "dog", "sky")


class ParityError(ExportError):
    """An fp32 graph does not reproduce its PyTorch module."""


def _session(path: Path):
    return create_session(path, SessionSettings())


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return cosine(a.reshape(len(a), -1), b.reshape(len(b), -1))


def _embedding_figures(expected: np.ndarray, actual: np.ndarray) -> dict:
    return {
        "max_abs_diff": float(np.abs(expected - actual).max()),
        "max_abs_value": float(np.abs(expected).max()),
        "min_cosine": float(_cosines(expected, actual).min()),
        "images": int(len(expected)),
    }


def _run_one_by_one(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """First output of the graph at `path`, sample by sample: how the runtime feeds dynamically quantized graphs."""
    session = _session(path)
    output = session.get_outputs()[0].name
    rows = list(range(len(next(iter(feeds.values())))))
    return map_chunks(rows, lambda idx: run_graph(session, path.name, [output], {k: v[idx] for k, v in feeds.items()})[0], 1, batch_invariant=False)


def embeddings(torch_module: torch.nn.Module, paths: dict[str, Path], pixels: np.ndarray) -> dict:
    """CLIP image tower or BLIP vision: fp32 vs torch, int8 vs fp32."""
    with torch.no_grad():
        expected = torch_module(torch.from_numpy(pixels)).numpy()
    fp32 = _session(paths["fp32"]).run(None, {"pixel_values": pixels})[0]
    figures = {"fp32_vs_torch": _embedding_figures(expected, fp32)}
    if "int8" in paths:
        int8 = _run_one_by_one(paths["int8"], {"pixel_values": pixels})
        figures["int8_vs_fp32"] = _embedding_figures(fp32, int8)
    return figures


def itm(blip_model: torch.nn.Module, tokenizer, vision_paths: dict[str, Path], itm_paths: dict[str, Path], pixels: np.ndarray) -> dict:
    """BLIP ITM probabilities: ONNX (blip_vision -> blip_itm) vs BlipForImageTextRetrieval."""
    pairs = [(i, word) for i in range(len(pixels)) for word in ITM_WORDS]
    encoded = tokenizer([w for _, w in pairs], padding=True, return_tensors="np")
    ids, mask = encoded["input_ids"].astype(np.int64), encoded["attention_mask"].astype(np.int64)
    image_index = np.array([i for i, _ in pairs])
    with torch.no_grad():
        logits = blip_model(
            input_ids=torch.from_numpy(ids), pixel_values=torch.from_numpy(pixels[image_index]), attention_mask=torch.from_numpy(mask)
        ).itm_score.numpy()
    expected = match_probability(logits)

    def onnx_probs(precision: str) -> np.ndarray:
        if precision == "int8":
            embeds = _run_one_by_one(vision_paths[precision], {"pixel_values": pixels})
            out = _run_one_by_one(itm_paths[precision], {"input_ids": ids, "attention_mask": mask, "image_embeds": embeds[image_index]})
            return match_probability(out)
        embeds = _session(vision_paths[precision]).run(None, {"pixel_values": pixels})[0]
        out = _session(itm_paths[precision]).run(None, {"input_ids": ids, "attention_mask": mask, "image_embeds": embeds[image_index]})[0]
        return match_probability(out)

    fp32 = onnx_probs("fp32")
    figures = {
        "fp32_vs_torch": {
            "max_prob_diff": float(np.abs(expected - fp32).max()),
            "pairs": len(pairs),
            "prob_range": [float(expected.min()), float(expected.max())],
        }
    }
    if "int8" in itm_paths:
        int8 = onnx_probs("int8")
        figures["int8_vs_fp32"] = {"max_prob_diff": float(np.abs(fp32 - int8).max()), "pairs": len(pairs)}
    return figures


def fastsam(
    model: torch.nn.Module,
    paths: dict[str, Path],
    proto_paths: dict[str, Path],
    images_rgb: list[np.ndarray],
    settings: LetterboxSettings,
    imgsz: int,
    conf: float,
    iou: float,
) -> dict:
    """FastSAM boxes after the full post-processing: fp32 graph vs torch, int8 vs fp32.

    proto_paths: the split-off prototype head of each precision, if FastSAM was split."""
    segmenters = {p: FastSamSegmenter(_session(path), settings, _session(proto_paths[p]) if p in proto_paths else None) for p, path in paths.items()}
    per_image = []
    rng = np.random.default_rng(0)
    for rgb in images_rgb:
        boxed = letterbox(np.ascontiguousarray(rgb[:, :, ::-1]), imgsz, settings)
        shape = boxed.tensor.shape[2:]
        with raw_outputs(model), torch.no_grad():
            pred_t, proto_t = (t.numpy() for t in model(torch.from_numpy(boxed.tensor)))
        outputs = {"torch": (pred_t, proto_t)}
        for precision, segmenter in segmenters.items():
            outputs[precision] = segmenter.prototypes(boxed.tensor)
        # control: the fp32 graph on the same image with +-1/255 noise (one grey level). A random
        # network is chaotic; int8 agreement is only meaningful relative to this.
        noisy = np.clip(boxed.tensor + rng.integers(-1, 2, size=boxed.tensor.shape) / np.float32(255), 0, 1).astype(np.float32)
        outputs["fp32_noise"] = segmenters["fp32"].prototypes(noisy)
        dets = {k: postprocess(p[0], q[0], shape, boxed.original_shape, conf, iou) for k, (p, q) in outputs.items()}
        row = {
            "boxes_torch": int(len(dets["torch"].xywh)),
            "fp32_box_f1": bx.box_f1(dets["torch"].xywh, dets["fp32"].xywh),
            "fp32_max_score_diff": float(np.abs(pred_t[0, 4] - outputs["fp32"][0][0, 4]).max()),
            "noise_box_f1": bx.box_f1(dets["fp32"].xywh, dets["fp32_noise"].xywh),
        }
        if "int8" in dets:
            row["boxes_int8"] = int(len(dets["int8"].xywh))
            row["int8_box_f1"] = bx.box_f1(dets["fp32"].xywh, dets["int8"].xywh)
            row["int8_max_score_diff"] = float(np.abs(outputs["fp32"][0][0, 4] - outputs["int8"][0][0, 4]).max())
        per_image.append(row)
    figures = {
        "imgsz": imgsz,
        "conf": conf,
        "iou": iou,
        "boxes_per_image_torch": [r["boxes_torch"] for r in per_image],
        "fp32_box_f1_per_image": [r["fp32_box_f1"] for r in per_image],
        "fp32_vs_torch": {
            "min_box_f1": min(r["fp32_box_f1"] for r in per_image),
            "max_score_diff": max(r["fp32_max_score_diff"] for r in per_image),
        },
        "fp32_input_noise_control": {
            "what": "fp32 boxes with +-1/255 input noise vs without: how chaotic the network is",
            "mean_box_f1": float(np.mean([r["noise_box_f1"] for r in per_image])),
        },
    }
    if "int8" in paths:
        figures["boxes_per_image_int8"] = [r["boxes_int8"] for r in per_image]
        figures["int8_vs_fp32"] = {
            "min_box_f1": min(r["int8_box_f1"] for r in per_image),
            "mean_box_f1": float(np.mean([r["int8_box_f1"] for r in per_image])),
            "max_score_diff": max(r["int8_max_score_diff"] for r in per_image),
        }
    return figures


def check(verification: dict, tolerances: Tolerances = TOLERANCES, images: str = "", user_images: bool = False) -> None:
    """Raise ParityError when an fp32 graph is outside tolerance, saying what was compared on what
    and what to do about it."""
    problems = []
    for graph in ("clip_vision", "blip_vision"):
        cos = verification[graph]["fp32_vs_torch"]["min_cosine"]
        if cos < tolerances.min_cosine:
            problems.append(f"{graph}: embeddings of the fp32 graph vs PyTorch, min cosine {cos:.6f} < {tolerances.min_cosine}")
    diff = verification["blip_itm"]["fp32_vs_torch"]["max_prob_diff"]
    if diff > tolerances.max_itm_prob_diff:
        problems.append(f"blip_itm: ITM match probability of the fp32 graphs vs BlipForImageTextRetrieval, max |diff| {diff:.2e} > {tolerances.max_itm_prob_diff}")
    fs = verification["fastsam"]
    f1 = fs["fp32_vs_torch"]["min_box_f1"]
    if f1 < tolerances.min_box_f1:
        noise = fs["fp32_input_noise_control"]["mean_box_f1"]
        problems.append(
            f"fastsam: boxes after full post-processing (imgsz {fs['imgsz']}, conf {fs['conf']}, iou {fs['iou']}) of the fp32 graph vs "
            f"the PyTorch model, worst image F1 {f1:.4f} < {tolerances.min_box_f1} at IoU 0.9 (per image: "
            f"{', '.join(f'{x:.3f}' for x in fs['fp32_box_f1_per_image'])}; the fp32 graph against itself with +-1 grey level "
            f"of input noise: mean F1 {noise:.3f}, i.e. how chaotic this network is on these images)"
        )
    if problems:
        advice = (
            "check these images are representative of your data"
            if user_images
            else "verify on images like your own data with --calibration-images DIR"
        )
        raise ParityError(
            f"fp32 ONNX graphs do not reproduce PyTorch on {images or 'the verification images'}: "
            + "; ".join(problems)
            + f". To do: {advice}; a graph that fails on natural photographs is a conversion problem worth reporting "
            "with the export's versions (manifest `versions`)."
        )
