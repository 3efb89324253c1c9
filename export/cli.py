"""`python -m imgdiff_onnx.export`: PyTorch models -> verified fp32 + int8 ONNX graphs + manifest."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import os
import platform
import shutil
import sys
import time
from importlib import metadata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgdiff_onnx.engine import integrity
from imgdiff_onnx.engine import manifest as mf
from imgdiff_onnx.engine.preprocess import letterbox, normalize_batch

from . import band, blip, clip, conv_kernels, fastsam, quantize, random_init, verify
from .onnx_io import describe, store_weights_beside
from .images import CalibrationImagesError, calibration_set
from .sources import ResolvedSource, SourceUnavailable, resolve_hf, resolve_ultralytics

log = logging.getLogger("imgdiff_onnx.export")

DEFAULT_CLIP = "openai/clip-vit-base-patch32"
DEFAULT_BLIP = "Salesforce/blip-itm-base-coco"
DEFAULT_FASTSAM = "FastSAM-x.pt"
DEFAULT_OPSET = 17
_PIL_RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m imgdiff_onnx.export",
        description=(
            "Convert CLIP (image tower), BLIP-ITM and FastSAM to ONNX (fp32 and int8), verify every graph "
            "against PyTorch, and write a model folder with manifest.json for the imgdiff_onnx runtime."
        ),
    )
    from imgdiff_onnx import __version__

    parser.add_argument("--version", action="version", version=f"imgdiff_onnx {__version__} (export)")
    parser.add_argument("--out", type=Path, required=True, help="model folder to write (created; must be empty unless --force)")
    parser.add_argument("--clip", default=DEFAULT_CLIP, help=f"CLIP: hub id or local Hugging Face folder (default {DEFAULT_CLIP})")
    parser.add_argument("--blip", default=DEFAULT_BLIP, help=f"BLIP ITM: hub id or local Hugging Face folder (default {DEFAULT_BLIP})")
    parser.add_argument("--fastsam", default=DEFAULT_FASTSAM, help=f"FastSAM Ultralytics checkpoint (default {DEFAULT_FASTSAM}; FastSAM-s.pt works too)")
    parser.add_argument("--precision", default="fp32,int8", help="comma-separated subset of fp32,int8 (fp32 is always built: int8 is made from it)")
    parser.add_argument(
        "--random-init",
        choices=random_init.SIZES,
        help="ignore --clip/--blip/--fastsam and build seeded random-weight models: 'full' = the real architectures, "
        "'tiny' = small configs for tests. Their PyTorch checkpoints are saved under OUT/torch/.",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for --random-init (default 0)")
    parser.add_argument(
        "--fastsam-class-bias",
        type=float,
        default=random_init.DEFAULT_FASTSAM_CLASS_BIAS,
        help=f"--random-init only: class-score bias of the random FastSAM head; sets how many boxes pass conf "
        f"(default {random_init.DEFAULT_FASTSAM_CLASS_BIAS})",
    )
    parser.add_argument(
        "--calibration-images",
        type=Path,
        help="folder of images for int8 calibration and verification, ideally like your own data "
        "(default: natural photographs shipped with scikit-image)",
    )
    parser.add_argument("--verify-imgsz", type=int, default=1024, help="FastSAM input size used for verification (default 1024)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    parser.add_argument("--force", action="store_true", help="write into a non-empty --out folder, replacing its model files")
    parser.add_argument("--quiet", action="store_true", help="only warnings and errors")
    return parser


def _precisions(text: str) -> list[str]:
    wanted = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in wanted if p not in mf.PRECISIONS]
    if unknown or not wanted:
        raise SystemExit(f"--precision: expected a comma-separated subset of {','.join(mf.PRECISIONS)}, got {text!r}")
    return [p for p in mf.PRECISIONS if p in wanted or p == "fp32"]


def _crops_for_calibration(images: list[np.ndarray], per_image: int = 4, seed: int = 0) -> list[np.ndarray]:
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


def _image_preprocessing(folder: Path) -> dict:
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


def _versions() -> dict:
    names = ["torch", "transformers", "ultralytics", "onnx", "onnxruntime", "optimum", "numpy", "opencv-python-headless", "tokenizers", "Pillow"]
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    found["python"] = platform.python_version()
    return found


def _prepare_out(out: Path, force: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not force:
            raise SystemExit(f"--out {out} is not empty; pass --force to replace its model files")
        graphs = [name(g, p) for name in (mf.graph_file, mf.amx_graph_file) for g in mf.GRAPHS + mf.OPTIONAL_GRAPHS for p in mf.PRECISIONS]
        weights = [f"{graph}.data" for graph in graphs]  # external weights (onnx_io.store_weights_beside)
        for name in [mf.MANIFEST_NAME, mf.TOKENIZER_FILE] + graphs + weights:
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


@dataclass
class _Loaded:
    """The three PyTorch models and the BLIP tokenizer, loaded from the resolved sources."""

    clip: Any
    blip: Any
    fastsam: Any
    tokenizer: Any


def _sources(args: argparse.Namespace, out: Path, calibration: list[np.ndarray]) -> tuple[dict[str, ResolvedSource], random_init.RandomInitSpec | None]:
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


def _load(sources: dict[str, ResolvedSource]) -> _Loaded:
    """Everything loads from the resolved files, so re-exporting from the saved checkpoint
    folders reproduces the same graphs."""
    from transformers import AutoTokenizer

    return _Loaded(
        clip=clip.load(sources["clip"].local_path),
        blip=blip.load(sources["blip"].local_path),
        fastsam=fastsam.load(sources["fastsam"].local_path),
        tokenizer=AutoTokenizer.from_pretrained(sources["blip"].local_path),
    )


def _export_fp32(models: _Loaded, sources: dict[str, ResolvedSource], out: Path, opset: int) -> tuple[dict[str, dict[str, Path]], dict[str, dict], dict[str, dict]]:
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
        "clip": _image_preprocessing(sources["clip"].local_path),
        "blip": _image_preprocessing(sources["blip"].local_path),
        "fastsam": {"stride": fastsam.stride(models.fastsam), "pad_value": 114, "interpolation": "linear", "rect": True, "source": "ultralytics LetterBox"},
    }
    return paths, interfaces, preprocessing


def _quantize(paths: dict[str, dict[str, Path]], pre: mf.Preprocessing, calibration: list[np.ndarray], imgsz: int) -> dict[str, dict]:
    """int8 graphs next to the fp32 ones (adds their paths); returns each graph's recipe."""
    out = paths["clip_vision"]["fp32"].parent
    for graph in mf.GRAPHS:
        paths[graph]["int8"] = out / mf.graph_file(graph, "int8")
    clip_inputs = [normalize_batch([im], pre.clip_settings) for im in _crops_for_calibration(calibration)]
    recipes = {"clip_vision": quantize.quantize_transformer_static(paths["clip_vision"]["fp32"], paths["clip_vision"]["int8"], "pixel_values", clip_inputs)}
    for graph in ("blip_vision", "blip_itm"):
        recipes[graph] = quantize.quantize_transformer(paths[graph]["fp32"], paths[graph]["int8"])
    calib_batches = [letterbox(np.ascontiguousarray(im[:, :, ::-1]), imgsz, pre.fastsam_settings).tensor for im in calibration]
    recipes["fastsam"] = quantize.quantize_fastsam(paths["fastsam"]["fp32"], paths["fastsam"]["int8"], calib_batches)
    return recipes


def _fastsam_samples(pre: mf.Preprocessing, calibration: list[np.ndarray], imgsz: int, count: int = 2) -> list[np.ndarray]:
    """FastSAM inputs for the bit-for-bit checks of rewritten graphs: the first calibration images, letterboxed."""
    return [letterbox(np.ascontiguousarray(im[:, :, ::-1]), imgsz, pre.fastsam_settings).tensor for im in calibration[:count]]


def _split_fastsam(paths: dict[str, dict[str, Path]], interfaces: dict[str, dict], pre: mf.Preprocessing, calibration: list[np.ndarray], imgsz: int) -> None:
    """FastSAM's prototype head as its own graph (prototypes on demand), at every precision or at
    none: kept only if the two graphs give the full graph's outputs bit for bit on calibration images."""
    samples = _fastsam_samples(pre, calibration, imgsz)
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


def _amx_variants(paths: dict[str, dict[str, Path]], pre: mf.Preprocessing, calibration: list[np.ndarray], imgsz: int) -> dict[str, dict[str, dict]]:
    """The int8 FastSAM graph's AMX variant (export/conv_kernels.py), when any convolution
    qualifies and the outputs are the same bit for bit: graph -> precision -> manifest record."""
    if "int8" not in paths["fastsam"]:
        return {}
    src = paths["fastsam"]["int8"]
    record = conv_kernels.build(src, src.with_name(mf.amx_graph_file("fastsam", "int8")), _fastsam_samples(pre, calibration, imgsz))
    return {"fastsam": {"int8": record}} if record else {}


def _verify(models: _Loaded, paths: dict[str, dict[str, Path]], pre: mf.Preprocessing, image_set: Any, imgsz: int, user_images: bool) -> dict:
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


def _graph_entries(
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


def _random_init_record(spec: random_init.RandomInitSpec | None) -> dict | None:
    if spec is None:
        return None
    return {"size": spec.size, "seed": spec.seed, "fastsam_class_bias": spec.fastsam_class_bias,
            "warning": "random weights: outputs are meaningless; use only for speed and plumbing tests"}  # fmt: skip


def run(args: argparse.Namespace) -> Path:
    """Sources -> PyTorch models -> fp32 graphs -> int8 graphs -> verification -> manifest."""
    started = time.perf_counter()
    out: Path = args.out
    precisions = _precisions(args.precision)
    _prepare_out(out, args.force)
    image_set = calibration_set(args.calibration_images)
    sources, random_spec = _sources(args, out, image_set.images)
    models = _load(sources)
    paths, interfaces, preprocessing = _export_fp32(models, sources, out, args.opset)
    pre = mf.Preprocessing(**preprocessing)
    recipes = _quantize(paths, pre, image_set.images, args.verify_imgsz) if "int8" in precisions else {}
    _split_fastsam(paths, interfaces, pre, image_set.images, args.verify_imgsz)
    amx_variants = _amx_variants(paths, pre, image_set.images, args.verify_imgsz)
    data_files = {"blip_itm": {precision: store_weights_beside(path) for precision, path in paths["blip_itm"].items()}}
    verification = _verify(models, paths, pre, image_set, args.verify_imgsz, user_images=args.calibration_images is not None)
    files = {
        path.relative_to(out).as_posix(): mf.FileEntry(path.stat().st_size, integrity.sha256(path))
        for path in sorted(p for p in out.rglob("*") if p.is_file() and p.name != mf.MANIFEST_NAME)
    }
    manifest = mf.Manifest(
        precisions=tuple(precisions),
        graphs=_graph_entries(paths, interfaces, recipes, data_files, amx_variants),
        preprocessing=pre,
        files=files,
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        opset=args.opset,
        random_init=_random_init_record(random_spec),
        sources={name: {"given": src.given, "local_path": str(src.local_path), "revision": src.revision} for name, src in sources.items()},
        versions=_versions(),
        verification=verification,
    )
    mf.write(out, manifest)
    if "int8" in precisions:  # measured by the runtime on the folder as written
        mf.write(out, manifest.with_guard_band(band.measure(out, image_set.images, image_set.describe())))
    log.info("model folder %s written in %.1f s", out, time.perf_counter() - started)
    return out


def _warnings_and_errors(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING


def configure_logging(quiet: bool) -> None:
    """Our loggers at INFO (WARNING with --quiet); third-party chatter (onnxruntime's quantizer logs
    at INFO on the root logger) stays at WARNING.

    With --quiet the libraries' own info and progress bars go too: Ultralytics' info lines (its
    logger resets its level when imported, so a filter does it) and the Hugging Face progress
    bars (read from the environment when transformers is imported, which the export does only
    after this; an explicit HF_HUB_DISABLE_PROGRESS_BARS wins)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("imgdiff_onnx", "imgdiff_onnx_export"):
        logging.getLogger(name).setLevel(logging.WARNING if quiet else logging.INFO)
    if quiet:
        ultralytics = logging.getLogger("ultralytics")
        if _warnings_and_errors not in ultralytics.filters:  # once, however often the export runs in a process
            ultralytics.addFilter(_warnings_and_errors)
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.quiet)
    try:
        run(args)
    except (SourceUnavailable, CalibrationImagesError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except verify.ParityError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    return 0
