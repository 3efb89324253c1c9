"""Command line: `python -m imgdiff_onnx demo` (and `export`, which needs the export extra)."""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path

log = logging.getLogger("imgdiff_onnx")


def _configure_logging(quiet: bool) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("imgdiff_onnx").setLevel(logging.WARNING if quiet else logging.INFO)


def demo(args: argparse.Namespace) -> int:
    """Export random-init models if needed, make sample pairs, run them, print where things are."""
    import cv2

    from . import samples
    from .manifest import MANIFEST_NAME
    from .params import OperatorParams
    from .pipeline import DifferenceAreaGenerator, EngineSettings, PairFailure, PairInput

    out: Path = args.out
    models = args.models or out / f"models-{args.size}"
    if not (models / MANIFEST_NAME).is_file():
        log.info("exporting random-init %s models to %s (needs the export extra)", args.size, models)
        cmd = [sys.executable, "-m", "imgdiff_onnx.export", "--random-init", args.size, "--out", str(models)]
        if args.quiet:
            cmd.append("--quiet")
        if subprocess.run(cmd).returncode != 0:
            print("error: the export step failed (see above)", file=sys.stderr)
            return 2
    data = out / "pairs"
    data.mkdir(parents=True, exist_ok=True)
    pairs = []
    for i in range(args.pairs):
        sample = samples.pair(i, 512, 512)
        p1, p2 = data / f"pair{i}_1.png", data / f"pair{i}_2.png"
        cv2.imwrite(str(p1), sample.image1[:, :, ::-1])
        cv2.imwrite(str(p2), sample.image2[:, :, ::-1])
        # explicit object words: the demo runs without NLTK data (captions are kept for reference)
        pairs.append(PairInput(p1, p2, sample.caption1, sample.caption2, (sample.object1,), (sample.object2,), key=f"pair{i}"))
    # Random weights give scores with no meaning: the gates are opened so the plumbing shows boxes.
    params = OperatorParams.from_dicts({"min_score_1": -1, "min_score_2": -1}, {"imgsz": 640}, {"min_score": 0})
    engine = DifferenceAreaGenerator(models, params, EngineSettings(precision=args.precision, threads=args.threads))
    results = out / "results.jsonl"
    with open(results, "w", encoding="utf-8") as handle:
        for result in engine.process_many(pairs):
            if isinstance(result, PairFailure):
                row = {"key": result.key, "status": "error", "error": result.error}
            else:
                row = {"key": result.key, "status": "ok", "boxes": result.boxes.round(2).tolist(), "objects1": result.objects1,
                       "objects2": result.objects2, "counts": result.counts}
            handle.write(json.dumps(row) + "\n")
            print(f"{row['key']}: {row['status']}, {len(row.get('boxes', []))} boxes")
    print(f"models:  {models}\npairs:   {data}\nresults: {results}")
    print("NOTE: these models have RANDOM weights (no pretrained weights can be downloaded here): the boxes are meaningless; "
          "the demo shows the pipeline working end to end, not detection quality.")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m imgdiff_onnx", description="Img-Diff difference areas on onnxruntime.")
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="offline demo: random-init models, generated sample pairs, results JSONL")
    d.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder (default demo_out)")
    d.add_argument("--models", type=Path, help="use this model folder instead of exporting one")
    d.add_argument("--size", choices=("tiny", "full"), default="tiny", help="random-init model size to export (default tiny)")
    d.add_argument("--pairs", type=int, default=4, help="number of generated sample pairs (default 4)")
    d.add_argument("--precision", choices=("int8", "fp32"), default="int8")
    d.add_argument("--threads", type=int, default=0, help="threads per session (0 = all cores)")
    d.add_argument("--quiet", action="store_true")
    sub.add_parser("export", help="the export step (same as python -m imgdiff_onnx.export)", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "export":
        from .export import main as export_main

        return export_main(argv[1:])
    args = build_parser().parse_args(argv)
    _configure_logging(args.quiet)
    if args.command == "demo":
        return demo(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
