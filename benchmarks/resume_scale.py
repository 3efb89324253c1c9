"""Resume at scale: how long `run --resume` takes to reach its first new record after N completed
lines, and the process's peak memory on the way.

The input has N + 8 records (explicit object words, as a dataset whose captions were already
compared); the results file holds the first N results. Line 1 comes from a real run (`--limit 1`,
which also writes the run record); lines 2..N are written by the same code that writes results
lines (`records.output_line`) with a fixed outcome, since N real pairs would take days. Then
`python -m imgdiff_onnx run --resume` starts as a user would; this script polls the results file
until it grows and reads the child's VmHWM from /proc until it exits.

    python -m benchmarks.resume_scale --out benchmarks/results/resume_scale [--lines 1000000] [--models MODELS]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from benchmarks.machine import process_memory_mb, save_record  # noqa: E402
from benchmarks.soak import OPEN_PARAMS, tiny_models  # noqa: E402


def write_input(work: Path, lines: int) -> Path:
    import cv2

    from imgdiff_onnx import samples

    s = samples.pair(0, 256, 256)
    cv2.imwrite(str(work / "a.png"), s.image1[:, :, ::-1])
    cv2.imwrite(str(work / "b.png"), s.image2[:, :, ::-1])
    path = work / "pairs.jsonl"
    with open(path, "w", encoding="utf-8") as handle:
        for n in range(lines):
            record = {"id": f"r{n:07d}", "caption1": "A cat on a mat.", "caption2": "A dog on a mat.", "image_path1": "a.png",
                      "image_path2": "b.png", "objects1": ["cat"], "objects2": ["dog"], "source": "benchmark"}  # fmt: skip
            handle.write(json.dumps(record) + "\n")
    (work / "params.json").write_text(json.dumps(OPEN_PARAMS))
    return path


def cli(models: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "imgdiff_onnx", "run", "--models", str(models), "--input", str(data), "--output", str(out),
            "--params", str(data.parent / "params.json"), "--threads", "1", "--quiet", *extra]  # fmt: skip


def fabricate_results(data: Path, out: Path, done: int) -> None:
    """Lines 2..done of `out` as the results writer formats them (line 1 is a real run's)."""
    import numpy as np

    from imgdiff_onnx.runs.jsonlines import read_lines
    from imgdiff_onnx.pairs import PairResult
    from imgdiff_onnx.runs.records import output_line, parse_line

    base = data.resolve().parent
    boxes = np.array([[10.0, 20.0, 30.0, 40.0]], dtype=np.float32)
    with open(out, "a", encoding="utf-8") as handle:
        for raw in read_lines(data, skip=1, limit=done):
            line = parse_line(raw, base)
            result = PairResult(line.key, boxes, ["cat"], ["dog"], 0.93, None, counts={"candidates": 12, "kept": 1})
            handle.write(output_line(line, result, False) + "\n")


def measure(models: Path, data: Path, out: Path) -> dict:
    size = out.stat().st_size
    start = time.perf_counter()
    proc = subprocess.Popen(cli(models, data, out, "--resume", "--limit", str(sum(1 for _ in open(data, "rb")))), stderr=subprocess.PIPE, text=True)
    first = None
    peak = 0.0
    while proc.poll() is None:
        try:
            peak = max(peak, process_memory_mb("VmHWM", proc.pid))
        except (OSError, ValueError, KeyError):
            pass  # exited between poll and read
        if first is None and out.stat().st_size > size:
            first = time.perf_counter() - start
        time.sleep(0.02)
    stderr = proc.stderr.read() if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"resume failed ({proc.returncode}): {stderr[-2000:]}")
    return {"seconds_to_first_new_line": first, "seconds_total": time.perf_counter() - start, "peak_rss_mb": peak}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--lines", type=int, default=1_000_000, help="completed lines in the results file (default 1,000,000)")
    ap.add_argument("--models", type=Path, help="model folder (default: tiny random-init models exported into a temp folder)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        models = args.models or tiny_models(work / "models")
        data = write_input(work, args.lines + 8)
        out = work / "results.jsonl"
        subprocess.run(cli(models, data, out, "--limit", "1"), check=True)
        t = time.perf_counter()
        fabricate_results(data, out, args.lines)
        fabricated = time.perf_counter() - t
        sizes = {"input_mb": data.stat().st_size / 1e6, "results_mb": out.stat().st_size / 1e6}
        result = measure(models, data, out)
        lines = out.read_bytes().count(b"\n")
        if lines != args.lines + 8:
            raise SystemExit(f"expected {args.lines + 8} result lines after the resume, found {lines}")
    summary = {"lines": args.lines, **sizes, **result, "fabricate_seconds": fabricated,
               "command": " ".join(["python -m benchmarks.resume_scale", "--out", str(args.out), "--lines", str(args.lines)])}  # fmt: skip
    header = ["completed lines", "input", "results file", "to first new line", "whole resume (8 records)", "peak RSS"]
    row = [f"{args.lines:,}", f"{sizes['input_mb']:.0f} MB", f"{sizes['results_mb']:.0f} MB", f"{result['seconds_to_first_new_line']:.1f} s",
           f"{result['seconds_total']:.1f} s", f"{result['peak_rss_mb']:.0f} MB"]  # fmt: skip
    save_record(args.out, "resume_scale", summary, header, [row])
    return 0


if __name__ == "__main__":
    sys.exit(main())
