"""How large a sweep grid is accepted, what it costs, and how fast a larger one is refused.

    python -m benchmarks.sweep_grid --out benchmarks/results/sweep_grid [--kept benchmarks/results/tuning/keep.jsonl] [--pairs 100,1000]

The kept run (default: the tuning benchmark's, full-size models, 120-289 crop windows a pair) is
repeated to each `--pairs` count (benchmarks.tuning.replicate: renumbered, scores jittered), and
`sweep` runs in a child process over a 50-setting and the largest accepted 2,500-setting grid
(50 x 50): wall and CPU seconds, peak RSS. Then a 2,500 x 2,500 grid, which `sweep` refuses:
how long the refusal takes and its peak. A child that imports the package and sweeps nothing is
the baseline.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.machine import cpu_description
from benchmarks.tuning import replicate

ROOT = Path(__file__).resolve().parents[1]
GRIDS = {
    "50 settings (max_score_2 in 50 steps)": ["--vary", "max_score_2=0.51:1.0:0.01"],
    "2,500 settings (the limit: 50 x 50)": ["--vary", "max_score_2=0.51:1.0:0.01", "--vary", "min_score=0.0:0.49:0.01"],
    "6,250,000 settings (refused)": ["--vary", "max_score_2=0.5:0.7499:0.0001", "--vary", "min_score=0.0:0.2499:0.0001"],
}
CHILD = ("import resource, sys, time; from benchmarks.machine import process_memory_mb; from imgdiff_onnx.__main__ import main; "
         "t, c = time.perf_counter(), time.process_time(); code = main(sys.argv[1:]) if sys.argv[1:] else 0; "
         "print(code, time.perf_counter() - t, time.process_time() - c, process_memory_mb('VmHWM'))")  # fmt: skip


def _child(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, *args], cwd=ROOT, capture_output=True, text=True, timeout=7200)
    code, wall, cpu, peak = proc.stdout.split()[-4:]
    return {"exit": int(code), "wall_s": round(float(wall), 3), "cpu_s": round(float(cpu), 3), "peak_rss_mb": round(float(peak), 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--kept", type=Path, default=ROOT / "benchmarks" / "results" / "tuning" / "keep.jsonl")
    parser.add_argument("--pairs", default="100,1000", help="kept pairs to sweep, comma-separated")
    args = parser.parse_args(argv)
    record: dict = {"cpu": cpu_description(), "started": time.strftime("%Y-%m-%d %H:%M:%S"), "kept": str(args.kept), "runs": []}
    work = Path(tempfile.mkdtemp(prefix="sweep-grid-"))
    try:
        record["baseline"] = _child([])
        for n in (int(v) for v in args.pairs.split(",")):
            folder = work / f"pairs-{n}"
            folder.mkdir()
            kept = replicate(args.kept, folder, n)
            for label, vary in GRIDS.items():
                out = folder / f"sweep-{len(record['runs'])}"
                row = {"pairs": n, "grid": label} | _child(["sweep", "--input", str(kept), *vary, "--out", str(out), "--quiet"])
                record["runs"].append(row)
                print(json.dumps(row), flush=True)
        record["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sweep_grid.json").write_text(json.dumps(record, indent=1) + "\n")
    lines = ["| kept pairs | grid | exit | wall s | CPU s | peak RSS MB |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['pairs']:,} | {r['grid']} | {r['exit']} | {r['wall_s']} | {r['cpu_s']} | {r['peak_rss_mb']:.0f} |" for r in record["runs"]]
    lines += ["", f"Baseline (the package imported, nothing swept): {record['baseline']['peak_rss_mb']:.0f} MB. CPU: {record['cpu']}"]
    (args.out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
