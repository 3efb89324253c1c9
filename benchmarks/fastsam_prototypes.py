"""FastSAM with complete prototypes vs prototypes on demand (tiles), one process, same graphs.

For each of the shared test photographs and the real pair's two images: the `fastsam` graph, then
either the prototype head on the whole feature map (what a folder with one FastSAM graph does) or
only the tiles the empty-mask rule reads (the default). Interleaved, best of `--repeats` CPU
times per image after a warm-up; one session thread. Reports CPU seconds, the share of tiles
computed, and whether both give the same boxes. The share depends on where the masks are
positive, i.e. on the weights: with random weights it says nothing about real checkpoints.

    python -m benchmarks.fastsam_prototypes --models models-full --precision fp32 [--imgsz 1024]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]

from benchmarks.machine import cpu_description, cpu_line  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    from imgdiff_onnx.engine.modelset import ModelSet, SessionSettings
    from imgdiff_onnx.engine.models.fastsam import postprocess, predictor_imgsz
    from imgdiff_onnx.engine.preprocess import letterbox

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, required=True, help="a model folder with FastSAM split (fastsam_proto)")
    parser.add_argument("--precision", choices=("fp32", "int8"), default="fp32")
    parser.add_argument("--imgsz", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    parser.add_argument("--out", type=Path, help="write summary.json here")
    args = parser.parse_args(argv)
    models = ModelSet(args.models, precision=args.precision)
    if "fastsam_proto" not in models.graphs:
        parser.error(f"{args.models}: FastSAM is one graph here; export again to get fastsam_proto")
    segmenter = models.components(SessionSettings(threads=1), 16).segmenter
    imgsz = predictor_imgsz(args.imgsz, models.letterbox.stride)

    def complete(bgr):
        boxed = letterbox(bgr, imgsz, models.letterbox)
        predictions, protos = segmenter.prototypes(boxed.tensor)
        return postprocess(predictions[0], protos[0], boxed.tensor.shape[2:], boxed.original_shape, 0.05, 0.5)

    def tiled(bgr):
        return segmenter.segment(bgr, imgsz, 0.05, 0.5)

    def best(fn, bgr):
        out, seconds = fn(bgr), []
        for _ in range(args.repeats):
            t = time.process_time()
            fn(bgr)
            seconds.append(time.process_time() - t)
        return out, min(seconds)

    rows = []
    paths = sorted((args.shared / "data/images").glob("*.jpg")) + sorted((args.shared / "data/pairs").glob("*.jpg"))
    for path in paths:
        bgr = cv2.imread(str(path))
        whole, t_whole = best(complete, bgr)
        lazy, t_lazy = best(tiled, bgr)
        same = bool(np.array_equal(whole.xywh, lazy.xywh) and np.array_equal(whole.scores, lazy.scores))
        rows.append({"image": path.name, "boxes": len(whole.xywh), "complete_cpu_s": t_whole, "tiled_cpu_s": t_lazy,
                     "tiles_computed": lazy.prototypes_computed, "same_boxes": same})  # fmt: skip
    total_whole, total_lazy = sum(r["complete_cpu_s"] for r in rows), sum(r["tiled_cpu_s"] for r in rows)
    cpu = cpu_description()
    lines = [cpu_line(cpu), "", f"FastSAM {args.precision}, imgsz {imgsz}, 1 thread, best of {args.repeats}", "",
             "| image | boxes | complete prototypes CPU-s | tiles CPU-s | tiles computed | same boxes |", "|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['image']} | {r['boxes']} | {r['complete_cpu_s']:.2f} | {r['tiled_cpu_s']:.2f} | {r['tiles_computed']:.0%} | {r['same_boxes']} |")
    lines.append(f"| all | | {total_whole:.2f} | {total_lazy:.2f} ({total_lazy / total_whole - 1:+.1%}) | | {all(r['same_boxes'] for r in rows)} |")
    print("\n".join(lines))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        summary = {"cpu": cpu, "precision": args.precision, "imgsz": imgsz, "rows": rows, "complete_cpu_s": total_whole, "tiled_cpu_s": total_lazy}
        (args.out / f"summary_{args.precision}.json").write_text(json.dumps(summary, indent=1))
        (args.out / f"table_{args.precision}.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
