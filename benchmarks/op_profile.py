"""Where one graph's time goes, by operator type: onnxruntime's own profiler, one thread.

The graph runs as the engine runs it (CPU, all graph optimisations, arena off), on inputs the
engine would feed: FastSAM on the real pair's first image letterboxed to --imgsz, CLIP and BLIP's
vision towers on --batch crops of the test photographs. Reported per run (after one warm-up):
the process CPU seconds, and per operator type (after onnxruntime's fusions, e.g. QuickGelu is a
fused SiLU) its kernel seconds, share and count.

`--precision int8-attention` profiles a graph the engine does not ship: the fp32 graph with
every MatMul dynamically quantized, the attention products (whose second input is not a
weight) included, as onnxruntime's quantize_dynamic writes it with MatMulConstBOnly off. It
also reports how far its output lies from the fp32 and the shipped int8 graphs' on the same input.

    python -m benchmarks.op_profile --models MODELS --graph fastsam --precision fp32 --out benchmarks/results/op_profile
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]

from benchmarks.machine import cpu_description, cpu_line  # noqa: E402
from imgdiff_onnx.engine.modelset import ModelSet  # noqa: E402
from imgdiff_onnx.engine.preprocess import letterbox, normalize_batch  # noqa: E402

GRAPHS = ("fastsam", "clip_vision", "blip_vision")
PRECISIONS = ("fp32", "int8", "int8-attention")
# matrix products, split in the tables by whether one input is a weight (the profiler's parameter_size)
MATMULS = {"MatMul", "FusedMatMul", "MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QLinearMatMul"}


def _op_label(args: dict) -> str:
    """The operator type, with " of two activations" for a matrix product without a weight
    input (attention's Q·Kᵀ and probabilities x V), which onnxruntime profiles as the same types
    as the linear layers."""
    op = args["op_name"]
    return f"{op} of two activations" if op in MATMULS and str(args.get("parameter_size", "")) == "0" else op


def quantize_every_matmul(fp32: Path, out: Path) -> Path:
    """The fp32 graph with all its MatMuls dynamically quantized, attention products included."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"], extra_options={"MatMulConstBOnly": False})
    return out


def first_output(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """A graph's first output on `feeds`, as float64."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, feeds)[0].astype(np.float64)


def _inputs(models: ModelSet, graph: str, shared: Path, imgsz: int, batch: int) -> dict[str, np.ndarray]:
    if graph == "fastsam":
        bgr = cv2.imread(str(shared / "data" / "pairs" / "img_pair_1.jpg"))
        return {"images": letterbox(bgr, imgsz, models.letterbox).tensor}
    photos = [cv2.imread(str(p))[:, :, ::-1] for p in sorted((shared / "data" / "images").glob("*.jpg"))]
    rng = np.random.default_rng(0)
    crops = []
    for i in range(batch):
        image = photos[i % len(photos)]
        h, w = image.shape[:2]
        ch, cw = int(rng.integers(h // 4, h)), int(rng.integers(w // 4, w))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        crops.append(np.ascontiguousarray(image[y : y + ch, x : x + cw]))
    return {"pixel_values": normalize_batch(crops, models.clip_norm if graph == "clip_vision" else models.blip_norm)}


def profile(path: Path, feeds: dict[str, np.ndarray], runs: int, prefix: Path) -> dict:
    options = ort.SessionOptions()  # as modelset.create_session builds the engine's, plus the profiler
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_cpu_mem_arena = False
    options.log_severity_level = 3
    options.enable_profiling = True
    options.profile_file_prefix = str(prefix)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    session.run(None, feeds)  # warm-up: its kernel events are left out below
    cpu = []
    for _ in range(runs):
        t = time.process_time()
        session.run(None, feeds)
        cpu.append(time.process_time() - t)
    trace = Path(session.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()  # onnxruntime's raw trace: megabytes per run of a large graph
    kernel = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    per_run = len(kernel) // (runs + 1)
    seconds: collections.Counter = collections.Counter()
    count: collections.Counter = collections.Counter()
    for e in kernel[per_run:]:
        seconds[_op_label(e["args"])] += e["dur"] / 1e6 / runs
        count[_op_label(e["args"])] += 1
    total = sum(seconds.values())
    ops = [{"op": op, "seconds": s, "share": s / total, "count": count[op] // runs} for op, s in seconds.most_common()]
    return {"cpu_seconds_per_run": cpu, "kernel_seconds_per_run": total, "ops": ops}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--graph", choices=GRAPHS, required=True)
    parser.add_argument("--precision", choices=PRECISIONS, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--imgsz", type=int, default=1024, help="FastSAM input size (default 1024)")
    parser.add_argument("--batch", type=int, default=16, help="crops per call for the vision towers (default 16)")
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be >= 1")
    if args.precision == "int8-attention" and args.graph == "fastsam":
        parser.error("--precision int8-attention is for the vision towers (FastSAM has no attention)")
    models = ModelSet(args.models, precision="fp32" if args.precision == "int8-attention" else args.precision)
    path = models.graphs[args.graph].path
    feeds = _inputs(models, args.graph, args.shared, args.imgsz, args.batch)
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"{args.graph}_{args.precision}"
    differences = {}
    if args.precision == "int8-attention":
        fp32 = path
        path = quantize_every_matmul(fp32, args.out / f"{name}.onnx")
        shipped = ModelSet(args.models, precision="int8").graphs[args.graph].path
        reference = first_output(fp32, feeds)
        differences = {"max_abs_difference_vs_fp32": float(np.abs(first_output(path, feeds) - reference).max()),
                       "int8_max_abs_difference_vs_fp32": float(np.abs(first_output(shipped, feeds) - reference).max())}  # fmt: skip
    result = profile(path, feeds, args.runs, args.out / f"onnxruntime_{name}")
    result |= differences
    if args.precision == "int8-attention":
        path.unlink()  # a graph the engine does not ship: tens of MB, rebuilt by the command
    result |= {"cpu": cpu_description(), "graph": args.graph, "precision": args.precision, "file": path.name,
               "input_shapes": {k: list(v.shape) for k, v in feeds.items()}}  # fmt: skip
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=1))
    lines = [cpu_line(result["cpu"]), "", f"{path.name}, inputs {result['input_shapes']}, 1 thread, {args.runs} runs: "
             f"{min(result['cpu_seconds_per_run']):.3f} CPU s per run (best)", "", "| operator | s per run | share | nodes |", "|---|---|---|---|"]  # fmt: skip
    lines += [f"| {o['op']} | {o['seconds']:.3f} | {100 * o['share']:.1f}% | {o['count']} |" for o in result["ops"] if o["share"] >= 0.001]
    if differences:
        lines += ["", f"output max |difference| vs the fp32 graph: {differences['max_abs_difference_vs_fp32']:.4g} "
                  f"(the shipped int8 graph: {differences['int8_max_abs_difference_vs_fp32']:.4g})"]  # fmt: skip
    (args.out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
