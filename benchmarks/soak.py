"""Soak: a long dataset run, sampling the process's resident memory and open file descriptors.

`python -m imgdiff_onnx run` on --pairs records (generated pairs cycled, each record its own id,
explicit object words so no NLTK data is needed; gates open so every pair reaches every stage;
FastSAM conf 0.5 keeps it to ~20 candidates a pair),
as a subprocess; once a second this script reads /proc/PID/status (VmRSS) and /proc/PID/fd and
the number of result lines written. A leak shows as memory or descriptors growing with the lines
written; the summary gives both at 10%, 50% and 100% of the run and the growth over its second
half.

    python -m benchmarks.soak --out benchmarks/results/soak [--models MODELS] [--pairs 1000]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from benchmarks.machine import cpu_description, cpu_line, process_memory_mb  # noqa: E402

OPEN_PARAMS = {
    "image_pair_similarity_filter_args": {"min_score_1": -1, "min_score_2": -1},
    "image_segment_mapper_args": {"imgsz": 320, "conf": 0.5},  # ~20 candidates per pair with tiny random weights
    "image_text_matching_filter_args": {"min_score": 0},
}


def dataset(work: Path, pairs: int, distinct: int = 16) -> Path:
    import cv2

    from imgdiff_onnx import samples

    (work / "img").mkdir(parents=True, exist_ok=True)
    for i in range(distinct):
        s = samples.pair(i, 384, 512)
        cv2.imwrite(str(work / "img" / f"p{i}_1.png"), s.image1[:, :, ::-1])
        cv2.imwrite(str(work / "img" / f"p{i}_2.png"), s.image2[:, :, ::-1])
    with open(work / "pairs.jsonl", "w") as handle:
        for n in range(pairs):
            i = n % distinct
            record = {"id": f"r{n}", "image_path1": f"img/p{i}_1.png", "image_path2": f"img/p{i}_2.png", "objects1": ["cat"], "objects2": ["dog"]}
            handle.write(json.dumps(record) + "\n")
    (work / "params.json").write_text(json.dumps(OPEN_PARAMS))
    return work / "pairs.jsonl"


def tiny_models(folder: Path) -> Path:
    """Tiny random-init models in `folder`, exported unless already there."""
    if not (folder / "manifest.json").is_file():
        subprocess.run([sys.executable, "-m", "imgdiff_onnx.export", "--random-init", "tiny", "--out", str(folder), "--force", "--quiet"], check=True)
    return folder


def sample(pid: int, output: Path) -> dict | None:
    try:
        rss = process_memory_mb("VmRSS", pid)
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError):
        return None
    if math.isnan(rss):  # exited, not yet reaped: a zombie has no memory fields and no descriptors
        return None
    lines = output.read_bytes().count(b"\n") if output.exists() else 0
    return {"t": time.perf_counter(), "rss_mb": rss, "fds": fds, "lines": lines}


def soak(models: Path, work: Path, pairs: int, extra: list[str]) -> dict:
    data = dataset(work, pairs)
    out = work / "results.jsonl"
    cmd = [sys.executable, "-m", "imgdiff_onnx", "run", "--models", str(models), "--input", str(data), "--output", str(out),
           "--params", str(work / "params.json"), "--overwrite", "--quiet", *extra]  # fmt: skip
    started = time.perf_counter()
    log = open(work / "run.stderr", "w+")  # a file, not a pipe: an undrained pipe would block the run
    proc = subprocess.Popen(cmd, stderr=log, text=True)
    samples = []
    while proc.poll() is None:
        s = sample(proc.pid, out)
        if s is not None:
            s["t"] -= started
            samples.append(s)
        time.sleep(1.0)
    log.seek(0)
    stderr = log.read()
    log.close()
    if proc.returncode != 0:
        raise SystemExit(f"the run failed ({proc.returncode}):\n{stderr[-3000:]}")
    written = out.read_bytes().count(b"\n")
    return {"pairs": pairs, "lines_written": written, "seconds": time.perf_counter() - started, "samples": samples, "command": cmd}


def at_fraction(samples: list[dict], total: int, fraction: float) -> dict:
    """The first sample at or after `fraction` of the lines written (the last one for 1.0)."""
    if fraction >= 1.0:
        return samples[-1]
    return next((s for s in samples if s["lines"] >= fraction * total), samples[-1])


def summary(result: dict) -> dict:
    s, n = result["samples"], result["pairs"]
    at = {f: at_fraction(s, n, f) for f in (0.1, 0.5, 1.0)}
    import numpy as np

    # least-squares slope of RSS against lines written, after the first 10% (warm-up): a leak is a
    # steady rise, while a single sample moves by tens of MB as buffers are freed and reused
    later = [x for x in s if x["lines"] >= at[0.1]["lines"]]
    slope = float(np.polyfit([x["lines"] for x in later], [x["rss_mb"] for x in later], 1)[0]) * 100 if len(later) > 2 else 0.0
    return {
        "rss_mb": {str(f): round(v["rss_mb"], 1) for f, v in at.items()},
        "fds": {str(f): v["fds"] for f, v in at.items()},
        "fds_range_after_10pct": [min(x["fds"] for x in s if x["lines"] >= at[0.1]["lines"]), max(x["fds"] for x in s)],
        "rss_slope_mb_per_100_pairs": round(slope, 2),
        "rss_range_after_10pct_mb": [round(min(x["rss_mb"] for x in later), 1), round(max(x["rss_mb"] for x in later), 1)],
        "peak_rss_mb": round(max(x["rss_mb"] for x in s), 1),
    }


def write_table(result: dict, out: Path) -> str:
    sm = result["summary"]
    lines = [
        cpu_line(result["cpu"]), "",
        f"{result['lines_written']} result lines in {result['seconds']:.0f} s ({len(result['samples'])} samples, one a second)", "",
        "| | 10% | 50% | 100% |", "|---|---|---|---|",
        f"| RSS (MB) | {sm['rss_mb']['0.1']} | {sm['rss_mb']['0.5']} | {sm['rss_mb']['1.0']} |",
        f"| open file descriptors | {sm['fds']['0.1']} | {sm['fds']['0.5']} | {sm['fds']['1.0']} |", "",
        f"After the first 10%: RSS slope {sm['rss_slope_mb_per_100_pairs']} MB per 100 pairs (least squares), range "
        f"{sm['rss_range_after_10pct_mb'][0]}-{sm['rss_range_after_10pct_mb'][1]} MB; descriptors "
        f"{sm['fds_range_after_10pct'][0]}-{sm['fds_range_after_10pct'][1]}; peak RSS {sm['peak_rss_mb']} MB",
    ]  # fmt: skip
    text = "\n".join(lines) + "\n"
    (out / "table.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--models", type=Path, help="model folder (default: export tiny random-init models into --out)")
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    models = args.models or tiny_models(args.out / "models-tiny")
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        result = soak(models, Path(tmp), args.pairs, ["--threads", str(args.threads)])
    result["summary"] = summary(result)
    result["cpu"] = cpu_description()
    (args.out / "soak.json").write_text(json.dumps(result, indent=1))
    table = write_table(result, args.out)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
