"""int8 FastSAM: the plain graph vs its AMX variant (export/conv_kernels.py), one process.

For each of the shared test photographs and the real pair's two images, the engine's FastSAM
stage (graph, prototype tiles, post-processing) on both graphs, interleaved (the order swaps
every repeat), best of `--repeats` CPU times per image after a warm-up; one session thread.
Reports CPU seconds, whether onnxruntime runs its int8 GEMM on AMX in this process, and whether
both give the same boxes and scores.

    python -m benchmarks.fastsam_amx --models models-full [--imgsz 1024] [--repeats 3] [--out DIR]
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
    from imgdiff_onnx.engine.cpu import onnxruntime_uses_amx
    from imgdiff_onnx.engine.modelset import ModelSet, SessionSettings
    from imgdiff_onnx.engine.models.fastsam import predictor_imgsz

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, required=True, help="a model folder whose int8 FastSAM has an AMX variant")
    parser.add_argument("--imgsz", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    parser.add_argument("--out", type=Path, help="write summary.json and table.md here")
    args = parser.parse_args(argv)
    plain, variant = (ModelSet(args.models, precision="int8", amx=amx) for amx in (False, True))
    if not variant.graphs["fastsam"].amx_variant:
        parser.error(f"{args.models}: its int8 FastSAM has no AMX variant (export again)")
    settings = SessionSettings(threads=1)
    segmenters = {"plain": plain.components(settings, 16).segmenter, "amx_variant": variant.components(settings, 16).segmenter}
    imgsz = predictor_imgsz(args.imgsz, plain.letterbox.stride)

    rows = []
    paths = sorted((args.shared / "data/images").glob("*.jpg")) + sorted((args.shared / "data/pairs").glob("*.jpg"))
    for path in paths:
        bgr = cv2.imread(str(path))
        results = {name: seg.segment(bgr, imgsz, 0.05, 0.5) for name, seg in segmenters.items()}  # warm-up
        seconds: dict[str, list[float]] = {name: [] for name in segmenters}
        for repeat in range(args.repeats):
            for name in list(segmenters)[:: 1 if repeat % 2 == 0 else -1]:
                t = time.process_time()
                segmenters[name].segment(bgr, imgsz, 0.05, 0.5)
                seconds[name].append(time.process_time() - t)
        a, b = results["plain"], results["amx_variant"]
        same = bool(np.array_equal(a.xywh, b.xywh) and np.array_equal(a.scores, b.scores))
        rows.append({"image": path.name, "boxes": len(a.xywh), "plain_cpu_s": min(seconds["plain"]), "amx_variant_cpu_s": min(seconds["amx_variant"]),
                     "same_boxes": same})  # fmt: skip
    total_plain, total_variant = sum(r["plain_cpu_s"] for r in rows), sum(r["amx_variant_cpu_s"] for r in rows)
    cpu = cpu_description()
    uses_amx = onnxruntime_uses_amx()
    record = variant.manifest.graph("fastsam", "int8").amx_variant or {}
    lines = [cpu_line(cpu), "", f"onnxruntime int8 GEMM on AMX in this process: {'yes' if uses_amx else 'no'}; "
             f"the variant moves {record.get('convs')} convolutions", "",
             f"FastSAM int8, imgsz {imgsz}, 1 thread, best of {args.repeats} (interleaved)", "",
             "| image | boxes | plain CPU-s | AMX variant CPU-s | same boxes |", "|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['image']} | {r['boxes']} | {r['plain_cpu_s']:.2f} | {r['amx_variant_cpu_s']:.2f} | {r['same_boxes']} |")
    lines.append(f"| all | | {total_plain:.2f} | {total_variant:.2f} ({total_variant / total_plain - 1:+.1%}) | {all(r['same_boxes'] for r in rows)} |")
    print("\n".join(lines))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        summary = {"cpu": cpu, "onnxruntime_uses_amx": uses_amx, "variant": record, "imgsz": imgsz, "repeats": args.repeats, "rows": rows,
                   "plain_cpu_s": total_plain, "amx_variant_cpu_s": total_variant}  # fmt: skip
        (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
        (args.out / "table.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
