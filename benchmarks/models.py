"""Per-model throughput against batch size: PyTorch fp32, onnxruntime fp32, onnxruntime int8,
side by side in one process, plus this CPU's matrix-multiply ceilings (large MatMul and
MatMulInteger on onnxruntime) and each model's achieved fraction of them.

    python benchmarks/models.py --models MODELDIR --out benchmarks/results/models [--threads 2]

MAC counts per sample come from forward hooks on the torch modules' Linear and Conv2d layers
(`_macs`): exact for those layers; attention products, norms and activations are not counted,
so achieved fractions are lower bounds. Dynamic-int8 graphs run one sample per call in the
engine (batch invariance); their batched rows are shown for information.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _best_of(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def matmul_ceiling(threads: int, size: int = 2048) -> dict:
    """GMAC/s of one large fp32 MatMul and one uint8 x int8 MatMulInteger on onnxruntime."""
    import onnxruntime as ort
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
    t_fp = _best_of(lambda: fp.run(None, {"A": x}), 3)
    q = session("MatMulInteger", TensorProto.UINT8, rng.integers(-128, 127, (size, size)).astype(np.int8), TensorProto.INT32)
    xq = rng.integers(0, 255, (size, size)).astype(np.uint8)
    t_q = _best_of(lambda: q.run(None, {"A": xq}), 3)
    return {"fp32_gmac_s": macs / t_fp / 1e9, "int8_gmac_s": macs / t_q / 1e9, "size": size}


def caption_step_ms(pairs: int = 2000) -> float:
    """S2 per pair after warm-up (NLTK loaded once), on distinct caption pairs."""
    from imgdiff_onnx.captions import objects_from_captions

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


def main(argv: list[str] | None = None) -> int:
    import torch

    from benchmarks.torch_engine import TorchModelSet
    from imgdiff_onnx.modelset import SessionSettings, create_session

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
    hidden = manifest["graphs"]["blip_vision"]["fp32"]["outputs"][0]["shape"][-1]
    cases = {
        "clip_vision": ([1, 8, 32], lambda b: {"pixel_values": rng.normal(size=(b, 3, 224, 224)).astype(np.float32)}),
        "blip_vision": ([1, 4, 8], lambda b: {"pixel_values": rng.normal(size=(b, 3, 384, 384)).astype(np.float32)}),
        "blip_itm": ([1, 8], None),
        "fastsam": ([1], lambda b: {"images": rng.uniform(size=(b, 3, args.fastsam_imgsz, args.fastsam_imgsz)).astype(np.float32)}),
    }
    embeds = torch_set.session("blip_vision", settings).run(None, {"pixel_values": rng.normal(size=(1, 3, 384, 384)).astype(np.float32)})[0]
    tokens = embeds.shape[1]
    cases["blip_itm"] = (
        [1, 8],
        lambda b: {"input_ids": np.tile(np.array([[101, 4946, 102]], np.int64), (b, 1)), "attention_mask": np.ones((b, 3), np.int64),
                   "image_embeds": np.repeat(embeds, b, axis=0).astype(np.float32)},
    )
    ceiling = matmul_ceiling(args.threads)
    results = {"threads": args.threads, "ceiling": ceiling, "models": {}, "captions_ms_per_pair": caption_step_ms()}
    print(f"caption step (S2) after warm-up: {results['captions_ms_per_pair']:.3f} ms per pair", flush=True)
    for graph, (batches, make) in cases.items():
        tsession = torch_set.session(graph, settings)
        example = make(1)
        macs = _macs(tsession.module, [torch.from_numpy(example[n]) for n in tsession.input_names])
        sessions = {"torch_fp32": tsession}
        for precision in ("fp32", "int8"):
            sessions[f"ort_{precision}"] = create_session(args.models / manifest["graphs"][graph][precision]["file"], settings)
        rows = {}
        for name, sess in sessions.items():
            for b in batches:
                feeds = make(b)
                seconds = _best_of(lambda: sess.run(None, feeds), args.repeats)
                per_sample = seconds / b
                peak = ceiling["int8_gmac_s"] if name == "ort_int8" else ceiling["fp32_gmac_s"]
                rows[f"{name} b{b}"] = {
                    "samples_per_s": 1.0 / per_sample,
                    "seconds_per_batch": seconds,
                    "achieved_gmac_s": macs / per_sample / 1e9,
                    "fraction_of_ceiling": macs / per_sample / 1e9 / peak,
                }
                print(f"{graph:12s} {name:10s} batch {b:2d}: {1 / per_sample:8.2f} samples/s, {macs / per_sample / 1e9:6.1f} GMAC/s "
                      f"({100 * macs / per_sample / 1e9 / peak:4.0f}% of ceiling)", flush=True)
        results["models"][graph] = {"gmacs_per_sample": macs / 1e9, "rows": rows}
    results["hidden"], results["tokens"] = hidden, tokens
    (args.out / "models.json").write_text(json.dumps(results, indent=2))
    lines = [f"Caption step (S2) after warm-up: {results['captions_ms_per_pair']:.3f} ms per pair", "", f"CPU ceiling ({args.threads} threads): fp32 MatMul {ceiling['fp32_gmac_s']:.0f} GMAC/s, int8 MatMulInteger {ceiling['int8_gmac_s']:.0f} GMAC/s", "",
             "| model | GMACs/sample | " + " | ".join(["torch fp32", "ORT fp32", "ORT int8"]) + " | int8 vs torch |", "|---|---|---|---|---|---|"]
    for graph, data in results["models"].items():
        best = {k: max(v["samples_per_s"] for name, v in data["rows"].items() if name.startswith(k)) for k in ("torch_fp32", "ort_fp32", "ort_int8")}
        frac = max(v["fraction_of_ceiling"] for name, v in data["rows"].items() if name.startswith("ort_int8"))
        lines.append(f"| {graph} | {data['gmacs_per_sample']:.1f} | {best['torch_fp32']:.2f}/s | {best['ort_fp32']:.2f}/s | "
                     f"{best['ort_int8']:.2f}/s ({100 * frac:.0f}% of int8 ceiling) | {best['ort_int8'] / best['torch_fp32']:.1f}x |")
    (args.out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
