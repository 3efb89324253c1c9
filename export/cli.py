"""`python -m imgdiff_onnx.export`: PyTorch models -> verified fp32 + int8 ONNX graphs + manifest."""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys
import time
from pathlib import Path


from imgdiff_onnx.engine import integrity
from imgdiff_onnx.errors import ExportError
from imgdiff_onnx.params import PairSimilarityArgs, SegmentArgs, TextMatchingArgs
from imgdiff_onnx.engine import manifest as mf

from . import band, random_init, steps, verify
from .onnx_io import store_weights_beside
from .images import CalibrationImagesError, calibration_set
from .sources import SourceUnavailable

log = logging.getLogger("imgdiff_onnx.export")

# the models the operator's parameters name by default (Data-Juicer's): written once, in imgdiff_onnx.params
DEFAULT_CLIP = PairSimilarityArgs.hf_clip
DEFAULT_BLIP = TextMatchingArgs.hf_blip
DEFAULT_FASTSAM = SegmentArgs.model_path
DEFAULT_OPSET = 17


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


class ExportUsageError(ExportError):
    """An option of the export is wrong (one line, exit 2)."""


def _precisions(text: str) -> list[str]:
    wanted = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in wanted if p not in mf.PRECISIONS]
    if unknown or not wanted:
        raise ExportUsageError(f"--precision: expected a comma-separated subset of {','.join(mf.PRECISIONS)}, got {text!r}")
    return [p for p in mf.PRECISIONS if p in wanted or p == "fp32"]


def _prepare_out(out: Path, force: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not force:
            raise ExportUsageError(f"--out {out} is not empty; pass --force to replace its model files")
        graphs = [name(g, p) for name in (mf.graph_file, mf.amx_graph_file) for g in mf.GRAPHS + mf.OPTIONAL_GRAPHS for p in mf.PRECISIONS]
        weights = [f"{graph}.data" for graph in graphs]  # external weights (onnx_io.store_weights_beside)
        for name in [mf.MANIFEST_NAME, mf.TOKENIZER_FILE] + graphs + weights:
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def run(args: argparse.Namespace) -> Path:
    """Sources -> PyTorch models -> fp32 graphs -> int8 graphs -> verification -> manifest."""
    started = time.perf_counter()
    out: Path = args.out
    precisions = _precisions(args.precision)
    _prepare_out(out, args.force)
    image_set = calibration_set(args.calibration_images)
    sources, random_spec = steps.resolve_sources(args, out, image_set.images)
    models = steps.load(sources)
    paths, interfaces, preprocessing = steps.export_fp32(models, sources, out, args.opset)
    pre = mf.Preprocessing(**preprocessing)
    recipes = steps.quantize_graphs(paths, pre, image_set.images, args.verify_imgsz) if "int8" in precisions else {}
    steps.split_fastsam(paths, interfaces, pre, image_set.images, args.verify_imgsz)
    amx_variants = steps.amx_variants(paths, pre, image_set.images, args.verify_imgsz)
    data_files = {"blip_itm": {precision: store_weights_beside(path) for precision, path in paths["blip_itm"].items()}}
    verification = steps.verify_graphs(models, paths, pre, image_set, args.verify_imgsz, user_images=args.calibration_images is not None)
    files = {
        path.relative_to(out).as_posix(): mf.FileEntry(path.stat().st_size, integrity.sha256(path))
        for path in sorted(p for p in out.rglob("*") if p.is_file() and p.name != mf.MANIFEST_NAME)
    }
    manifest = mf.Manifest(
        precisions=tuple(precisions),
        graphs=steps.graph_entries(paths, interfaces, recipes, data_files, amx_variants),
        preprocessing=pre,
        files=files,
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        opset=args.opset,
        random_init=steps.random_init_record(random_spec),
        sources={name: {"given": src.given, "local_path": str(src.local_path), "revision": src.revision} for name, src in sources.items()},
        versions=steps.versions(),
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
    except (SourceUnavailable, CalibrationImagesError, ExportUsageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except verify.ParityError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    return 0
