"""int8 FastSAM recipes against the fp32 graph: candidate boxes F1, with the fp32 noise control.

Each recipe quantizes the exported fp32 FastSAM graph (static QDQ, uint8 activations, int8
weights) with other choices: per-channel weight scales, percentile or entropy calibration, and
more of the network kept float (the head, the last stages). Every variant is run on held-out
natural photographs (not the calibration images) at the given imgsz and the boxes after the full
post-processing are compared with the fp32 graph's (F1 at IoU 0.9). The control row is the fp32
graph itself with +-1 grey level of input noise: a random-weight network is chaotic, so no recipe
can be judged tighter than that. Seconds per image say what each recipe costs.

    python -m benchmarks.fastsam_int8 --models MODELS --out benchmarks/results/fastsam_int8 [--imgsz 1024]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

from benchmarks.machine import cpu_description, cpu_line  # noqa: E402

RECIPES = {
    # name: (per_channel, calibration method, what stays float beyond the head decode)
    "per-tensor minmax (shipped)": (False, "MinMax", "decode"),
    "per-channel minmax": (True, "MinMax", "decode"),
    "per-channel percentile": (True, "Percentile", "decode"),
    "per-channel entropy": (True, "Entropy", "decode"),
    "per-channel minmax, head float": (True, "MinMax", "head"),
    "per-channel minmax, head + last stages float": (True, "MinMax", "head+neck"),
}


def _float_nodes(model_path: Path, scope: str) -> list[str]:
    import onnx

    from imgdiff_onnx_export.quantize import _fastsam_float_nodes

    if scope == "decode":
        return _fastsam_float_nodes(model_path)
    graph = onnx.load(str(model_path)).graph
    names = [n.name for n in graph.node]
    head = next(n.split("/dfl/")[0] for n in names if "/dfl/" in n) + "/"
    keep = [n for n in names if n.startswith(head)]
    if scope == "head+neck":  # the top-down/bottom-up neck that feeds the head: YOLOv8 layers 15-21
        keep += [n for n in names if any(n.startswith(f"/model.{k}/") for k in range(15, 22))]
    return keep


def quantize(src: Path, dst: Path, recipe: tuple, calibration: list[np.ndarray]) -> float:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from imgdiff_onnx_export.quantize import _FeedReader

    per_channel, method, scope = recipe
    started = time.perf_counter()
    quantize_static(
        str(src), str(dst), _FeedReader("images", calibration), quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=per_channel,
        calibrate_method=getattr(CalibrationMethod, method), nodes_to_exclude=_float_nodes(src, scope),
        # histogram methods keep every activation of every sample until the end: one image at a time
        extra_options={"CalibMovingAverage": False, **({"CalibStridedMinMax": 1} if method != "MinMax" else {})},
    )  # fmt: skip
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--imgsz", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--recipes", default=";".join(RECIPES), help="';'-separated names from RECIPES")
    args = parser.parse_args(argv)
    import onnxruntime as ort

    from imgdiff_onnx.engine.boxes import box_f1
    from imgdiff_onnx.imageio import load_image_file
    from imgdiff_onnx.engine.modelset import ModelSet, SessionSettings, create_session
    from imgdiff_onnx.engine.models.fastsam import postprocess
    from imgdiff_onnx.engine.preprocess import letterbox
    from imgdiff_onnx_export.fastsam import join_prototype_head
    from imgdiff_onnx_export.images import natural_images

    args.out.mkdir(parents=True, exist_ok=True)
    models = ModelSet(args.models, "fp32")
    src = models.graphs["fastsam"].path
    if "fastsam_proto" in models.graphs:  # the recipes below quantize FastSAM's whole graph
        src = args.out / "fastsam.fp32.whole.onnx"
        join_prototype_head(models.graphs["fastsam"].path, models.graphs["fastsam_proto"].path, src)
    calib = natural_images()
    assert calib is not None, "needs scikit-image's photographs (the export extra)"
    to_input = lambda rgb: letterbox(np.ascontiguousarray(rgb[:, :, ::-1]), args.imgsz, models.letterbox)  # noqa: E731
    calibration = [to_input(im).tensor for im in calib.images]
    held_out = sorted((ROOT.parent / "shared" / "data").rglob("*.jpg"))  # never used for calibration
    inputs = [to_input(load_image_file(p).rgb) for p in held_out]
    settings = SessionSettings(threads=args.threads)
    rng = np.random.default_rng(0)

    def boxes(session: ort.InferenceSession, tensor: np.ndarray, shape) -> np.ndarray:
        pred, proto = session.run(["predictions", "protos"], {"images": tensor})
        return postprocess(pred[0], proto[0], tensor.shape[2:], shape, 0.05, 0.5).xywh

    fp32 = create_session(src, settings)
    reference, rows = [], []
    t = time.perf_counter()
    for x in inputs:
        reference.append(boxes(fp32, x.tensor, x.original_shape))
    fp32_seconds = (time.perf_counter() - t) / len(inputs)
    noise = []
    for x, ref in zip(inputs, reference):
        noisy = np.clip(x.tensor + rng.integers(-1, 2, size=x.tensor.shape) / np.float32(255), 0, 1).astype(np.float32)
        noise.append(box_f1(ref, boxes(fp32, noisy, x.original_shape)))
    rows.append({"recipe": "fp32 + 1 grey level of noise (control)", "mean_f1": float(np.mean(noise)), "min_f1": float(np.min(noise)),
                 "s_per_image": fp32_seconds, "boxes": [len(r) for r in reference]})  # fmt: skip
    print(rows[-1], flush=True)
    partial = args.out / "rows.jsonl"  # one line per finished row: a run killed later keeps what it measured
    partial.write_text(json.dumps(rows[-1]) + "\n")
    for name in (n.strip() for n in args.recipes.split(";")):
        dst = args.out / f"fastsam.{name.replace(' ', '_').replace(',', '').replace('+', 'and').replace('(', '').replace(')', '')}.onnx"
        seconds = quantize(src, dst, RECIPES[name], calibration)
        session = create_session(dst, settings)
        t = time.perf_counter()
        got = [boxes(session, x.tensor, x.original_shape) for x in inputs]
        per_image = (time.perf_counter() - t) / len(inputs)
        f1 = [box_f1(r, g) for r, g in zip(reference, got)]
        rows.append({"recipe": name, "mean_f1": float(np.mean(f1)), "min_f1": float(np.min(f1)), "s_per_image": per_image,
                     "boxes": [len(g) for g in got], "quantize_seconds": seconds})  # fmt: skip
        dst.unlink()
        print(rows[-1], flush=True)
        with partial.open("a") as f:
            f.write(json.dumps(rows[-1]) + "\n")
    cpu = cpu_description()
    lines = [cpu_line(cpu), "", f"imgsz {args.imgsz}, held-out images: {', '.join(p.name for p in held_out)}; calibration: {calib.describe()}", "",
             f"fp32 graph: {fp32_seconds:.2f} s/image, boxes per image {rows[0]['boxes']}", "",
             "| recipe | candidate F1 vs fp32, mean (min) | s/image | boxes per image |", "|---|---|---|---|"]  # fmt: skip
    lines += [f"| {r['recipe']} | {r['mean_f1']:.3f} ({r['min_f1']:.3f}) | {r['s_per_image']:.2f} | {r['boxes']} |" for r in rows]
    (args.out / "table.md").write_text("\n".join(lines) + "\n")
    (args.out / "results.json").write_text(json.dumps({"cpu": cpu, "imgsz": args.imgsz, "rows": rows}, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
