"""End-to-end benchmark: four modes side by side in one run, each in its own process.

  (a) reference     PyTorch, the original's order of work (benchmarks/reference.py)
  (b) torch_engine  the engine's algorithm on PyTorch fp32 modules (benchmarks/torch_engine.py)
  (c) onnx_fp32     the engine on onnxruntime fp32 graphs
  (d) onnx_int8     the engine on onnxruntime int8 graphs

Rounds interleave the modes (a b c d a b c d ...). Each worker process loads its models (cold
start: time to build the sessions / modules), processes every pair once, and reports per-stage
seconds, pairs/hour, peak RSS (ru_maxrss, all models loaded) and the boxes. The parent writes
JSON, a markdown table and a PNG chart, and compares the modes' boxes.

Thresholds: chosen from the fp32 engine's observed scores on the same pairs (gates open), so
every gate both passes and rejects candidates; written into the results. The crop-pair gate's
upper bound sits at the 30th percentile of crop-pair similarities (it rejects ~70%: in an
Img-Diff pair most candidate regions are unchanged, which is what that gate removes), the ITM
lower bound at the median of the ITM scores. The gates' pass counts are reported.

    python -m benchmarks.end_to_end --models MODELDIR --out benchmarks/results/e2e [--generated-pairs 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

from benchmarks.machine import cpu_description, cpu_line, process_memory_mb  # noqa: E402

MODES = ("reference", "torch_engine", "onnx_fp32", "onnx_int8")  # plus "onnx_int8-arena" etc. on request
STAGES = ("load", "captions", "pair_gate", "segment", "crop_pair_gate", "itm_image1", "itm_image2", "overlap")


def _pairs(shared: Path, generated: int, work: Path) -> list[dict]:
    """The real shared pair plus generated pairs (written as PNG files)."""
    import cv2

    from imgdiff_onnx import samples

    pairs = [
        {
            "key": "real pair",
            "image1": str(shared / "data/pairs/img_pair_1.jpg"),
            "image2": str(shared / "data/pairs/img_pair_2.jpg"),
            "caption1": "A plane in the sky flying alone.",
            "caption2": "A boat in the ocean sailing alone.",
        }
    ]
    work.mkdir(parents=True, exist_ok=True)
    for i in range(generated):
        s = samples.pair(100 + i, 768, 1024)
        p1, p2 = work / f"gen{i}_1.png", work / f"gen{i}_2.png"
        cv2.imwrite(str(p1), s.image1[:, :, ::-1])
        cv2.imwrite(str(p2), s.image2[:, :, ::-1])
        pairs.append({"key": f"generated {i}", "image1": str(p1), "image2": str(p2), "caption1": s.caption1, "caption2": s.caption2})
    return pairs


def _split(values: list[float], quantile: float) -> float:
    v = np.unique(np.asarray(values, dtype=np.float64))
    if len(v) < 2:
        return float(v[0]) if len(v) else 0.5
    k = min(len(v) - 2, int(quantile * (len(v) - 1)))
    return float((v[k] + v[k + 1]) / 2)


def choose_params(models: Path, pairs: list[dict], imgsz: int, threads: int, conf: float | None = None) -> dict:
    """Open gates on the fp32 engine, then thresholds inside the observed score distributions."""
    from imgdiff_onnx import DifferenceAreaGenerator, EngineSettings, OperatorParams, PairInput

    segment = {"imgsz": imgsz} if conf is None else {"imgsz": imgsz, "conf": conf}
    open_params = OperatorParams.from_dicts({"min_score_1": -1, "min_score_2": -1, "max_score_2": 1}, segment, {"min_score": 0})
    engine = DifferenceAreaGenerator(models, open_params, EngineSettings(precision="fp32", threads=threads, diagnostics=True))
    crop, itm = [], []
    for p in pairs:
        r = engine.process(PairInput(p["image1"], p["image2"], p["caption1"], p["caption2"], key=p["key"]))
        crop += list(r.diagnostics.get("crop_pair", {}).values())
        itm += list(r.diagnostics.get("itm_image1", {}).values()) + list(r.diagnostics.get("itm_image2", {}).values())
    return {
        "image_pair_similarity_filter_args": {"min_score_1": -1.0, "max_score_1": 1.0, "min_score_2": -1.0, "max_score_2": _split(crop, 0.3)},
        "image_segment_mapper_args": segment,
        "image_text_matching_filter_args": {"min_score": _split(itm, 0.5), "max_score": 1.0},
    }


def worker(mode: str, models: Path, pairs: list[dict], params_dict: dict, threads: int) -> dict:
    """One mode in this process: cold start, every pair once, peak memory."""
    from imgdiff_onnx import DifferenceAreaGenerator, EngineSettings, OperatorParams, PairInput

    from imgdiff_onnx.engine.captions import ensure_available

    params = OperatorParams.from_mapping(params_dict)
    started = time.perf_counter()
    ensure_available()  # the caption data (WordNet nouns, tagger tables) loads once per process: part of the cold start
    nltk_seconds = time.perf_counter() - started
    if mode == "reference":
        import torch

        from benchmarks.reference import TorchReference

        torch.set_num_threads(threads)
        ref = TorchReference(models / "torch" / "clip", models / "torch" / "blip", models / "torch" / "fastsam.pt", params, threads=threads)
        run = lambda p: ref.process(p["image1"], p["image2"], p["caption1"], p["caption2"])  # noqa: E731
    else:
        if mode == "torch_engine":
            from benchmarks.torch_engine import TorchModelSet

            modelset = TorchModelSet(models, threads=threads)
            engine = DifferenceAreaGenerator(modelset, params, EngineSettings(precision="fp32", threads=threads))
        else:
            # "onnx_int8" / "onnx_fp32", optionally "-arena" (onnxruntime's CPU memory arena on; off
            # by default) and/or "-nopattern" (its memory-pattern planning off; on by default)
            precision, *variants = mode.split("_")[1].split("-")
            settings = EngineSettings(precision=precision, threads=threads, memory_arena="arena" in variants, memory_pattern="nopattern" not in variants)
            engine = DifferenceAreaGenerator(models, params, settings)
        run = lambda p: engine.process(PairInput(p["image1"], p["image2"], p["caption1"], p["caption2"], key=p["key"]))  # noqa: E731
    cold = time.perf_counter() - started
    rows = []
    for p in pairs:
        t, cpu = time.perf_counter(), time.process_time()
        r = run(p)
        total, cpu = time.perf_counter() - t, time.process_time() - cpu
        candidates = len(r.candidate_boxes) if r.candidate_boxes is not None else 0
        counts = dict(getattr(r, "counts", {}) or {})
        if mode == "reference":
            counts = {"candidates": candidates, "after_itm_image1": len(r.itm1_passed), "after_itm_both": len(r.itm_passed),
                      "after_crop_pair_gate": len(r.survivors), "kept": len(r.kept)}
        rows.append({"key": p["key"], "seconds": total, "cpu_seconds": cpu, "times": dict(r.times), "candidates": candidates, "counts": counts,
                     "boxes": np.asarray(r.boxes).tolist()})
    return {"mode": mode, "cold_start_s": cold, "models_load_s": cold - nltk_seconds, "peak_rss_mb": process_memory_mb("VmHWM"), "pairs": rows}


def _ordered(summary: dict) -> list[str]:
    return [m for m in MODES if m in summary["modes"]] + [m for m in summary["modes"] if m not in MODES]


def _table(summary: dict) -> str:
    modes = _ordered(summary)
    lines = ["| | " + " | ".join(modes) + " |", "|---|" + "---|" * len(modes)]

    def row(name, fn):
        lines.append(f"| {name} | " + " | ".join(fn(summary["modes"][m]) for m in modes) + " |")

    for stage in STAGES:
        row(f"{stage} (s/pair)", lambda s, st=stage: f"{s['stage_seconds'].get(st, 0.0):.2f}")
    row("**total (s/pair)**", lambda s: f"**{s['seconds_per_pair']:.2f}**")
    row("pairs/hour", lambda s: f"{s['pairs_per_hour']:.0f}")
    row("CPU s/pair (cores busy)", lambda s: f"{s['cpu_seconds_per_pair']:.1f} ({s['cores_busy']:.2f})")
    row("speed-up vs reference", lambda s: f"{s['speedup_vs_reference']:.1f}x" if s.get("speedup_vs_reference") else "-")
    row("peak RSS (MB)", lambda s: f"{s['peak_rss_mb']:.0f}")
    row("cold start: models (s)", lambda s: f"{s['models_load_s']:.1f}")
    row("cold start: models + caption data (s)", lambda s: f"{s['cold_start_s']:.1f}")
    row("box F1 vs reference (IoU 0.9)", lambda s: f"{s['box_f1_vs_reference']:.3f}" if s.get("box_f1_vs_reference") is not None else "-")
    return "\n".join(lines)


def _chart(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = _ordered(summary)
    bottom = np.zeros(len(modes))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for stage in STAGES:
        values = np.array([summary["modes"][m]["stage_seconds"].get(stage, 0.0) for m in modes])
        ax.bar(modes, values, bottom=bottom, label=stage)
        bottom += values
    ax.set_yscale("log")
    ax.set_ylabel("seconds per pair (log)")
    ax.set_title("imgdiff_onnx end to end, per stage")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def summarise(runs: list[dict], params: dict, boxes_per_image: dict) -> dict:
    from imgdiff_onnx.engine.boxes import box_f1

    by_mode: dict[str, list[dict]] = {}
    for r in runs:
        by_mode.setdefault(r["mode"], []).append(r)
    summary = {"params": params, "boxes_per_image": boxes_per_image, "modes": {}}
    for mode, rs in by_mode.items():
        rows = [row for r in rs for row in r["pairs"]]
        stage = {st: float(np.mean([row["times"].get(st, 0.0) for row in rows])) for st in STAGES}
        seconds = float(np.mean([row["seconds"] for row in rows]))
        cpu_seconds = float(np.mean([row["cpu_seconds"] for row in rows]))
        summary["modes"][mode] = {
            "runs": len(rs),
            "seconds_per_pair": seconds,
            "pairs_per_hour": 3600.0 / seconds,
            "cpu_seconds_per_pair": cpu_seconds,
            "cores_busy": cpu_seconds / seconds,
            "stage_seconds": stage,
            "peak_rss_mb": float(max(r["peak_rss_mb"] for r in rs)),
            "cold_start_s": float(np.median([r["cold_start_s"] for r in rs])),
            "models_load_s": float(np.median([r["models_load_s"] for r in rs])),
            "boxes": {row["key"]: row["boxes"] for row in rs[0]["pairs"]},
            "counts": {row["key"]: row["counts"] for row in rs[0]["pairs"]},
        }
    ref = summary["modes"].get("reference")
    for mode, s in summary["modes"].items():
        if ref:
            s["speedup_vs_reference"] = ref["seconds_per_pair"] / s["seconds_per_pair"]
            s["box_f1_vs_reference"] = float(np.mean([box_f1(np.array(s["boxes"][k]).reshape(-1, 4), np.array(ref["boxes"][k]).reshape(-1, 4)) for k in ref["boxes"]]))
    if "onnx_int8" in summary["modes"] and "onnx_fp32" in summary["modes"]:
        a, b = summary["modes"]["onnx_int8"], summary["modes"]["onnx_fp32"]
        summary["int8_box_f1_vs_fp32"] = float(np.mean([box_f1(np.array(a["boxes"][k]).reshape(-1, 4), np.array(b["boxes"][k]).reshape(-1, 4)) for k in b["boxes"]]))
    if "onnx_int8" in summary["modes"] and "torch_engine" in summary["modes"]:
        summary["int8_engine_vs_torch_engine"] = summary["modes"]["torch_engine"]["seconds_per_pair"] / summary["modes"]["onnx_int8"]["seconds_per_pair"]
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, required=True, help="model folder (random-init full for honest speed)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/e2e")
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    parser.add_argument("--generated-pairs", type=int, default=1)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--imgsz", type=int, default=1024)
    parser.add_argument("--conf", type=float, help="override FastSAM conf (e.g. a high value for a quick memory-only run)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--job", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("NLTK_DATA", str(args.shared / "nltk_data"))

    if args.worker:
        job = json.loads(args.job.read_text())
        result = worker(args.worker, args.models, job["pairs"], job["params"], args.threads)
        args.job.with_suffix(f".{args.worker}.{job['round']}.json").write_text(json.dumps(result))
        return 0

    args.out.mkdir(parents=True, exist_ok=True)
    pairs = _pairs(args.shared, args.generated_pairs, args.out / "pairs")
    params = choose_params(args.models, pairs, args.imgsz, args.threads, args.conf)
    print("thresholds:", json.dumps(params), flush=True)
    runs = []
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for rnd in range(args.rounds):
        for mode in modes:
            job = args.out / f"job{rnd}.json"
            job.write_text(json.dumps({"pairs": pairs, "params": params, "round": rnd}))
            started = time.perf_counter()
            cmd = [sys.executable, "-m", __spec__.name, "--models", str(args.models), "--worker", mode, "--job", str(job), "--threads", str(args.threads),
                   "--shared", str(args.shared)]
            subprocess.run(cmd, check=True)
            runs.append(json.loads(job.with_suffix(f".{mode}.{rnd}.json").read_text()))
            print(f"round {rnd} {mode}: {time.perf_counter() - started:.1f} s", flush=True)
    boxes_per_image = {r["key"]: r["candidates"] for r in runs[0]["pairs"]}
    summary = summarise(runs, params, boxes_per_image)
    summary["command"] = " ".join(["python", "-m", "benchmarks.end_to_end", *(argv if argv is not None else sys.argv[1:])])
    summary["cpu"] = cpu_description()
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    table = cpu_line(summary["cpu"]) + "\n\n" + _table(summary)
    (args.out / "table.md").write_text(table + "\n")
    _chart(summary, args.out / "stages.png")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
