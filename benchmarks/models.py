"""Per-model throughput against batch size: PyTorch fp32, onnxruntime fp32, onnxruntime int8,
side by side in one process, plus this CPU's matrix-multiply ceilings (large MatMul and
MatMulInteger on onnxruntime) and each model's achieved fraction of them.

    python -m benchmarks.models --models MODELDIR --out benchmarks/results/models [--threads 2]

MAC counts per sample come from forward hooks on the torch modules' Linear and Conv2d layers
(`_macs`): exact for those layers; attention products, norms and activations are not counted,
so achieved fractions are lower bounds. Dynamic-int8 graphs run one sample per call in the
engine (batch invariance): the table's int8 column takes their batch-1 row (what the engine
gets); the batched rows are in the JSON for information. "Cores busy" is the process's CPU
time over wall time while a row ran: how many of the threads asked for really worked.
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


def _best_of(fn, repeats: int) -> tuple[float, float]:
    """Best wall time over the repeats, and the cores kept busy meanwhile (this process's CPU
    time over wall time, all threads: 2.0 = both of 2 threads ran the whole time)."""
    fn()  # warm-up
    best = float("inf")
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best, (time.process_time() - cpu) / (time.perf_counter() - wall)


def matmul_ceiling(threads: int, size: int = 2048) -> dict:
    """GMAC/s of one large fp32 MatMul and one uint8 x int8 MatMulInteger on onnxruntime, and of
    one large fp32 matmul on torch (the torch column's own ceiling), with the cores each kept busy."""
    import onnxruntime as ort
    import torch
    from onnx import TensorProto, helper, numpy_helper

    def session(op: str, a_type, w: np.ndarray, y_type):
        a = helper.make_tensor_value_info("A", a_type, [size, size])
        y = helper.make_tensor_value_info("Y", y_type, [size, size])
        graph = helper.make_graph([helper.make_node(op, ["A", "W"], ["Y"])], "g", [a], [y], [numpy_helper.from_array(w, "W")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])

    rng = np.random.default_rng(0)
    macs = size**3
    fp = session("MatMul", TensorProto.FLOAT, rng.random((size, size), dtype=np.float32), TensorProto.FLOAT)
    x = rng.random((size, size), dtype=np.float32)
    t_fp, busy_fp = _best_of(lambda: fp.run(None, {"A": x}), 3)
    q = session("MatMulInteger", TensorProto.UINT8, rng.integers(-128, 127, (size, size)).astype(np.int8), TensorProto.INT32)
    xq = rng.integers(0, 255, (size, size)).astype(np.uint8)
    t_q, busy_q = _best_of(lambda: q.run(None, {"A": xq}), 3)
    xt, wt = torch.from_numpy(x), torch.from_numpy(rng.random((size, size), dtype=np.float32))
    with torch.no_grad():
        t_torch, busy_torch = _best_of(lambda: torch.matmul(xt, wt), 3)
    return {"fp32_gmac_s": macs / t_fp / 1e9, "int8_gmac_s": macs / t_q / 1e9, "torch_fp32_gmac_s": macs / t_torch / 1e9,
            "cores_busy": {"ort_fp32": busy_fp, "ort_int8": busy_q, "torch_fp32": busy_torch}, "size": size}


def caption_step_ms(pairs: int = 2000) -> float:
    """S2 per pair after warm-up (NLTK loaded once), on distinct caption pairs."""
    from imgdiff_onnx.engine.captions import objects_from_captions

    objects_from_captions("A cat on a mat.", "A dog on a mat.")
    nouns = ["cat", "dog", "boat", "plane", "car", "tree", "house", "bird", "ball", "lamp"]
    data = [(f"A {nouns[i % 10]} next to a {nouns[(i // 10) % 10]} number {i}.", f"A {nouns[(i + 3) % 10]} next to a {nouns[(i // 10) % 10]} number {i}.")
            for i in range(pairs)]
    started = time.perf_counter()
    for a, b in data:
        objects_from_captions(a, b)
    return (time.perf_counter() - started) / pairs * 1000


def _macs(module, example) -> float:
    """Multiply-accumulates of Linear and Conv layers for one forward pass (hooks)."""
    import torch

    total = [0]

    def linear(m, inp, out):
        total[0] += out.numel() * m.in_features

    def conv(m, inp, out):
        total[0] += out.numel() * (m.in_channels // m.groups) * int(np.prod(m.kernel_size))

    hooks = []
    for m in module.modules():
        if isinstance(m, torch.nn.Linear):
            hooks.append(m.register_forward_hook(linear))
        elif isinstance(m, torch.nn.Conv2d):
            hooks.append(m.register_forward_hook(conv))
    with torch.no_grad():
        module(*example)
    for h in hooks:
        h.remove()
    return float(total[0])


class _WholeFastSam:
    """A split FastSAM (fastsam + fastsam_proto) run as the whole network, like the torch module
    it is compared with: the prototype head on the whole feature map."""

    def __init__(self, main, proto):
        from imgdiff_onnx.engine.models.fastsam import FastSamSegmenter
        from imgdiff_onnx.engine.preprocess import LetterboxSettings

        self._segmenter = FastSamSegmenter(main, LetterboxSettings(), proto)

    def run(self, names, feeds, run_options=None):
        return list(self._segmenter.prototypes(feeds["images"]))


def _ort_session(folder: Path, manifest, graph: str, precision: str, settings):
    """The graph the engine would load here (an AMX variant where onnxruntime uses AMX)."""
    from imgdiff_onnx.engine.cpu import onnxruntime_uses_amx
    from imgdiff_onnx.engine.modelset import create_session

    session = create_session(folder / manifest.graph(graph, precision).file_for(onnxruntime_uses_amx()), settings)
    if graph == "fastsam" and "fastsam_proto" in manifest.graphs:
        return _WholeFastSam(session, create_session(folder / manifest.graph("fastsam_proto", precision).file, settings))
    return session


def main(argv: list[str] | None = None) -> int:
    import torch

    from benchmarks.torch_engine import TorchModelSet
    from imgdiff_onnx.engine.modelset import SessionSettings

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/models")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--fastsam-imgsz", type=int, default=1024)
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared", help="test data folder (NLTK data for the caption timing)")
    args = parser.parse_args(argv)
    import os

    os.environ.setdefault("NLTK_DATA", str(args.shared / "nltk_data"))
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)

    torch_set = TorchModelSet(args.models, threads=args.threads)
    settings = SessionSettings(threads=args.threads)
    rng = np.random.default_rng(0)
    manifest = torch_set.manifest
    hidden = manifest.graph("blip_vision", "fp32").outputs[0]["shape"][-1]
    clip_hw, blip_hw = (tuple(manifest.graph(g, "fp32").inputs[0]["shape"][2:]) for g in ("clip_vision", "blip_vision"))
    cases = {
        "clip_vision": ([1, 8, 32], lambda b: {"pixel_values": rng.normal(size=(b, 3, *clip_hw)).astype(np.float32)}),
        "blip_vision": ([1, 4, 8], lambda b: {"pixel_values": rng.normal(size=(b, 3, *blip_hw)).astype(np.float32)}),
        "blip_itm": ([1, 8], None),
        "fastsam": ([1], lambda b: {"images": rng.uniform(size=(b, 3, args.fastsam_imgsz, args.fastsam_imgsz)).astype(np.float32)}),
    }
    embeds = torch_set.session("blip_vision", settings).run(None, {"pixel_values": rng.normal(size=(1, 3, *blip_hw)).astype(np.float32)})[0]
    tokens = embeds.shape[1]
    cases["blip_itm"] = (
        [1, 8],
        lambda b: {"input_ids": np.tile(np.array([[101, 4946, 102]], np.int64), (b, 1)), "attention_mask": np.ones((b, 3), np.int64),
                   "image_embeds": np.repeat(embeds, b, axis=0).astype(np.float32)},
    )
    ceiling = matmul_ceiling(args.threads)
    results = {"threads": args.threads, "cpu": cpu_description(), "ceiling": ceiling, "models": {}, "captions_ms_per_pair": caption_step_ms()}
    print(f"caption step (S2) after warm-up: {results['captions_ms_per_pair']:.3f} ms per pair", flush=True)
    for graph, (batches, make) in cases.items():
        tsession = torch_set.session(graph, settings)
        example = make(1)
        macs = _macs(tsession.module, [torch.from_numpy(example[n]) for n in tsession.input_names])
        sessions = {"torch_fp32": tsession}
        for precision in ("fp32", "int8"):
            sessions[f"ort_{precision}"] = _ort_session(args.models, manifest, graph, precision, settings)
        rows = {}
        for name, sess in sessions.items():
            for b in batches:
                feeds = make(b)
                seconds, busy = _best_of(lambda: sess.run(None, feeds), args.repeats)
                per_sample = seconds / b
                peak = ceiling["int8_gmac_s"] if name == "ort_int8" else ceiling["fp32_gmac_s"]
                rows[f"{name} b{b}"] = {
                    "samples_per_s": 1.0 / per_sample,
                    "seconds_per_batch": seconds,
                    "achieved_gmac_s": macs / per_sample / 1e9,
                    "fraction_of_ceiling": macs / per_sample / 1e9 / peak,
                    "cores_busy": busy,
                }
                print(f"{graph:12s} {name:10s} batch {b:2d}: {1 / per_sample:8.2f} samples/s, {macs / per_sample / 1e9:6.1f} GMAC/s "
                      f"({100 * macs / per_sample / 1e9 / peak:4.0f}% of ceiling), {busy:.2f} cores busy", flush=True)
        results["models"][graph] = {"gmacs_per_sample": macs / 1e9, "rows": rows, "int8_batch_invariant": manifest.graph(graph, "int8").batch_invariant}
    results["hidden"], results["tokens"] = hidden, tokens
    (args.out / "models.json").write_text(json.dumps(results, indent=2))
    busy = ceiling["cores_busy"]
    lines = [cpu_line(results["cpu"]), "", f"Caption step (S2) after warm-up: {results['captions_ms_per_pair']:.3f} ms per pair", "",
             f"CPU ceiling ({args.threads} threads, cores busy): onnxruntime fp32 MatMul {ceiling['fp32_gmac_s']:.0f} GMAC/s ({busy['ort_fp32']:.2f}), "
             f"int8 MatMulInteger {ceiling['int8_gmac_s']:.0f} GMAC/s ({busy['ort_int8']:.2f}); torch fp32 matmul {ceiling['torch_fp32_gmac_s']:.0f} GMAC/s ({busy['torch_fp32']:.2f})", "",
             "Best batch per column; in brackets the cores that run kept busy.", "",
             "| model | GMACs/sample | " + " | ".join(["torch fp32", "ORT fp32", "ORT int8"]) + " | int8 vs torch |", "|---|---|---|---|---|---|"]
    for graph, data in results["models"].items():
        usable = {name: v for name, v in data["rows"].items() if data["int8_batch_invariant"] or name.startswith(("torch", "ort_fp32")) or name.endswith(" b1")}
        best = {k: max((v for name, v in usable.items() if name.startswith(k)), key=lambda v: v["samples_per_s"]) for k in ("torch_fp32", "ort_fp32", "ort_int8")}
        frac = best["ort_int8"]["fraction_of_ceiling"]
        cell = {k: f"{v['samples_per_s']:.2f}/s ({v['cores_busy']:.1f})" for k, v in best.items()}
        lines.append(f"| {graph} | {data['gmacs_per_sample']:.1f} | {cell['torch_fp32']} | {cell['ort_fp32']} | "
                     f"{cell['ort_int8']}{'' if data['int8_batch_invariant'] else ' at batch 1'}, {100 * frac:.0f}% of int8 ceiling | "
                     f"{best['ort_int8']['samples_per_s'] / best['torch_fp32']['samples_per_s']:.1f}x |")
    (args.out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
