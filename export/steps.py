"""The export's steps, in the order `run` (export/cli.py) calls them: resolve the sources and
load the PyTorch models, export fp32 graphs, quantize to int8, split FastSAM's prototype head,
build AMX variants, verify against PyTorch, and describe each graph for the manifest."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import platform
import shutil
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from imgdiff_onnx.engine import manifest as mf
from imgdiff_onnx.engine.preprocess import letterbox, normalize_batch

from . import blip, clip, conv_kernels, fastsam, quantize, random_init, verify
from .onnx_io import describe
from .sources import ResolvedSource, SourceUnavailable, resolve_hf, resolve_ultralytics

log = logging.getLogger("imgdiff_onnx.export")

_PIL_RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}


def crops_for_calibration(images: list[np.ndarray], per_image: int = 4, seed: int = 0) -> list[np.ndarray]:
    """What the CLIP graph sees at run time: whole images and candidate-sized crops of them."""
    rng = np.random.default_rng(seed)
    out = []
    for image in images:
        out.append(image)
        h, w = image.shape[:2]
        for _ in range(per_image):
            ch, cw = int(rng.integers(max(8, h // 10), h // 2 + 1)), int(rng.integers(max(8, w // 10), w // 2 + 1))
            y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            out.append(image[y : y + ch, x : x + cw])
    return out


def image_preprocessing(folder: Path) -> dict:
    """The HF processor's settings (preprocessor_config.json), in the runtime's vocabulary."""
    legacy, combined = folder / "preprocessor_config.json", folder / "processor_config.json"
    if legacy.is_file():  # hub repos and transformers < 5
        config, origin = json.loads(legacy.read_text(encoding="utf-8")), legacy.name
    elif combined.is_file():  # transformers >= 5 save_pretrained of a processor
        config, origin = json.loads(combined.read_text(encoding="utf-8"))["image_processor"], combined.name
    else:
        raise SourceUnavailable(f"{folder}: no preprocessor_config.json or processor_config.json (image processor settings)")
    size = config.get("size", {})
    crop = config.get("crop_size", {}) if config.get("do_center_crop", False) else {}
    resample = config.get("resample", 3)
    return {
        "resize_shortest_edge": size.get("shortest_edge"),
        "resize_height": size.get("height"),
        "resize_width": size.get("width"),
        "crop_height": crop.get("height"),
        "crop_width": crop.get("width"),
        "resample": _PIL_RESAMPLE_NAMES.get(resample, resample) if isinstance(resample, int) else str(resample).lower(),
        "rescale_factor": float(config.get("rescale_factor", 1 / 255)) if config.get("do_rescale", True) else 1.0,
        "mean": list(config["image_mean"]),
        "std": list(config["image_std"]),
        "convert_rgb": bool(config.get("do_convert_rgb", True)),
        "source": origin,
    }


def versions() -> dict:
    names = ["torch", "transformers", "ultralytics", "onnx", "onnxruntime", "optimum", "numpy", "opencv-python-headless", "tokenizers", "Pillow"]
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    found["python"] = platform.python_version()
    return found


@dataclasses.dataclass
class LoadedModels:
    """The three PyTorch models and the BLIP tokenizer, loaded from the resolved sources."""

    clip: Any
    blip: Any
    fastsam: Any
    tokenizer: Any


def resolve_sources(args: argparse.Namespace, out: Path, calibration: list[np.ndarray]) -> tuple[dict[str, ResolvedSource], random_init.RandomInitSpec | None]:
    """Where each checkpoint comes from: the given ids/paths, or random-init checkpoints built into out/torch."""
    random_spec = None
    if args.random_init:
        random_spec = random_init.RandomInitSpec(args.random_init, args.seed, args.fastsam_class_bias)
        torch_dir = out / "torch"
        if torch_dir.exists():
            shutil.rmtree(torch_dir)
        clip_src = str(random_init.build_clip(random_spec, torch_dir / "clip"))
        blip_src = str(random_init.build_blip(random_spec, torch_dir / "blip"))
        fastsam_src = str(random_init.build_fastsam(random_spec, torch_dir / "fastsam.pt", calibration))
    else:
        clip_src, blip_src, fastsam_src = args.clip, args.blip, args.fastsam
    sources = {"clip": resolve_hf(clip_src, "CLIP", "--clip"), "blip": resolve_hf(blip_src, "BLIP", "--blip"), "fastsam": resolve_ultralytics(fastsam_src)}
    return sources, random_spec


def load(sources: dict[str, ResolvedSource]) -> LoadedModels:
    """Everything loads from the resolved files, so re-exporting from the saved checkpoint
    folders reproduces the same graphs."""
    from transformers import AutoTokenizer

    return LoadedModels(
        clip=clip.load(sources["clip"].local_path),
        blip=blip.load(sources["blip"].local_path),
        fastsam=fastsam.load(sources["fastsam"].local_path),
        tokenizer=AutoTokenizer.from_pretrained(sources["blip"].local_path),
    )


def export_fp32(models: LoadedModels, sources: dict[str, ResolvedSource], out: Path, opset: int) -> tuple[dict[str, dict[str, Path]], dict[str, dict], dict[str, dict]]:
    """fp32 graphs, the tokenizer and the preprocessing records: (paths, interfaces, preprocessing)."""
    models.tokenizer.backend_tokenizer.save(str(out / mf.TOKENIZER_FILE))
    paths = {g: {"fp32": out / mf.graph_file(g, "fp32")} for g in mf.GRAPHS}
    interfaces = {
        "clip_vision": clip.export(models.clip, paths["clip_vision"]["fp32"], opset),
        "blip_vision": blip.export_vision(models.blip, paths["blip_vision"]["fp32"], opset),
        "blip_itm": blip.export_itm(models.blip, paths["blip_itm"]["fp32"], opset),
        "fastsam": fastsam.export(models.fastsam, paths["fastsam"]["fp32"], opset),
    }
    preprocessing = {
        "clip": image_preprocessing(sources["clip"].local_path),
        "blip": image_preprocessing(sources["blip"].local_path),
        "fastsam": {"stride": fastsam.stride(models.fastsam), "pad_value": 114, "interpolation": "linear", "rect": True, "source": "ultralytics LetterBox"},
    }
    return paths, interfaces, preprocessing


def quantize_graphs(paths: dict[str, dict[str, Path]], pre: mf.Preprocessing, calibration: list[np.ndarray], imgsz: int) -> dict[str, dict]:
    """int8 graphs next to the fp32 ones (adds their paths); returns each graph's recipe."""
    out = paths["clip_vision"]["fp32"].parent
    for graph in mf.GRAPHS:
        paths[graph]["int8"] = out / mf.graph_file(graph, "int8")
    clip_inputs = [normalize_batch([im], pre.clip_settings) for im in crops_for_calibration(calibration)]
    recipes = {"clip_vision": quantize.quantize_transformer_static(paths["clip_vision"]["fp32"], paths["clip_vision"]["int8"], "pixel_values", clip_inputs)}
    for graph in ("blip_vision", "blip_itm"):
        recipes[graph] = quantize.quantize_transformer(paths[graph]["fp32"], paths[graph]["int8"])
    calib_batches = [letterbox(np.ascontiguousarray(im[:, :, ::-1]), imgsz, pre.fastsam_settings).tensor for im in calibration]
    recipes["fastsam"] = quantize.quantize_fastsam(paths["fastsam"]["fp32"], paths["fastsam"]["int8"], calib_batches)
    return recipes


def fastsam_samples(pre: mf.Preprocessing, calibration: list[np.ndarray], imgsz: int, count: int = 2) -> list[np.ndarray]:
    """FastSAM inputs for the bit-for-bit checks of rewritten graphs: the first calibration images, letterboxed."""
    return [letterbox(np.ascontiguousarray(im[:, :, ::-1]), imgsz, pre.fastsam_settings).tensor for im in calibration[:count]]


def split_fastsam(paths: dict[str, dict[str, Path]], interfaces: dict[str, dict], pre: mf.Preprocessing, calibration: list[np.ndarray], imgsz: int) -> None:
    """FastSAM's prototype head as its own graph (prototypes on demand), at every precision or at
    none: kept only if the two graphs give the full graph's outputs bit for bit on calibration images."""
    samples = fastsam_samples(pre, calibration, imgsz)
    staged = {}
    for precision, path in paths["fastsam"].items():
        main, proto = path.with_name(f"split-{path.name}"), path.with_name(f"split-{mf.graph_file('fastsam_proto', precision)}")
        fastsam.split_prototype_head(path, main, proto)
        staged[precision] = (main, proto)
        if not fastsam.same_outputs(path, main, proto, samples):
            log.warning("fastsam %s: the split graphs do not reproduce the full graph bit for bit; FastSAM stays one graph", precision)
            break
    else:
        paths["fastsam_proto"] = {}
        for precision, (main, proto) in staged.items():
            main.replace(paths["fastsam"][precision])
            paths["fastsam_proto"][precision] = proto.replace(proto.with_name(proto.name.removeprefix("split-")))
        interfaces["fastsam"] = describe(paths["fastsam"]["fp32"])
        interfaces["fastsam_proto"] = describe(paths["fastsam_proto"]["fp32"])
        return
    for main, proto in staged.values():
        main.unlink(missing_ok=True)
        proto.unlink(missing_ok=True)


def amx_variants(paths: dict[str, dict[str, Path]], pre: mf.Preprocessing, calibration: list[np.ndarray], imgsz: int) -> dict[str, dict[str, dict]]:
    """The int8 FastSAM graph's AMX variant (export/conv_kernels.py), when any convolution
    qualifies and the outputs are the same bit for bit: graph -> precision -> manifest record."""
    if "int8" not in paths["fastsam"]:
        return {}
    src = paths["fastsam"]["int8"]
    record = conv_kernels.build(src, src.with_name(mf.amx_graph_file("fastsam", "int8")), fastsam_samples(pre, calibration, imgsz))
    return {"fastsam": {"int8": record}} if record else {}


def verify_graphs(models: LoadedModels, paths: dict[str, dict[str, Path]], pre: mf.Preprocessing, image_set: Any, imgsz: int, user_images: bool) -> dict:
    """Every graph against its PyTorch module (export/verify.py); raises ParityError outside tolerance."""
    calibration = image_set.images
    log.info("verifying graphs against PyTorch on %d images", len(calibration))
    blip_pixels = normalize_batch(calibration[:4], pre.blip_settings)
    verification = {
        "images": image_set.describe(),
        "clip_vision": verify.embeddings(clip.ClipImageTower(models.clip).eval(), paths["clip_vision"], normalize_batch(calibration, pre.clip_settings)),
        "blip_vision": verify.embeddings(blip.BlipVision(models.blip).eval(), paths["blip_vision"], blip_pixels),
        "blip_itm": verify.itm(models.blip, models.tokenizer, paths["blip_vision"], paths["blip_itm"], blip_pixels),
        "fastsam": verify.fastsam(models.fastsam, paths["fastsam"], paths.get("fastsam_proto", {}), calibration, pre.fastsam_settings, imgsz, conf=0.05, iou=0.5),
        "tolerances": dataclasses.asdict(verify.TOLERANCES),
    }
    verify.check(verification, images=image_set.describe(), user_images=user_images)
    return verification


GRAPH_MODEL_RECIPE = {"fastsam_proto": "fastsam"}  # the split graph was quantized as part of fastsam


def graph_entries(
    paths: dict[str, dict[str, Path]],
    interfaces: dict[str, dict],
    recipes: dict[str, dict],
    data_files: dict[str, dict[str, str]],
    amx_variants: dict[str, dict[str, dict]],
) -> dict[str, dict[str, mf.GraphEntry]]:
    entries: dict[str, dict[str, mf.GraphEntry]] = {}
    for graph, by_precision in paths.items():
        entries[graph] = {}
        for precision, path in by_precision.items():
            recipe = recipes[GRAPH_MODEL_RECIPE.get(graph, graph)] if precision == "int8" else None
            invariant = precision == "fp32" or bool(recipe.get("batch_invariant"))
            info = interfaces[graph]
            data_file = data_files.get(graph, {}).get(precision)
            amx = amx_variants.get(graph, {}).get(precision)
            entries[graph][precision] = mf.GraphEntry(path.name, invariant, tuple(info["inputs"]), tuple(info["outputs"]), info.get("opset"), recipe, data_file, amx)
    return entries


def random_init_record(spec: random_init.RandomInitSpec | None) -> dict | None:
    if spec is None:
        return None
    return {"size": spec.size, "seed": spec.seed, "fastsam_class_bias": spec.fastsam_class_bias,
            "warning": "random weights: outputs are meaningless; use only for speed and plumbing tests"}  # fmt: skip
