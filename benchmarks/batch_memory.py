"""Peak memory of one batch as its candidates grow: K copies of a pair scored together
(`process_many(pairs_per_batch=K)`), each K in a fresh process, default settings.

Every gate's crops are cut and scored `windows_per_step` windows at a time, so what grows with the
batch is what each pair holds until the batch ends (its two images, candidate boxes, ledger), not
the crops. The table gives candidates in the batch, peak RSS (VmHWM), RSS when ready, wall and CPU
seconds.

    python -m benchmarks.batch_memory --models MODELS --out benchmarks/results/batch_memory [--batches 1,5,20] [--gates open]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from benchmarks.machine import process_memory_mb, save_record  # noqa: E402


def worker(job: dict) -> dict:
    from imgdiff_onnx import DifferenceAreaGenerator, EngineSettings, OperatorParams, PairInput
    from imgdiff_onnx.engine.captions import ensure_available

    ensure_available()
    engine = DifferenceAreaGenerator(job["models"], OperatorParams.from_mapping(job["params"]), EngineSettings())
    ready = process_memory_mb("VmRSS")
    p = job["pair"]
    pairs = [PairInput(p["image1"], p["image2"], p["caption1"], p["caption2"], key=f"{p['key']} {i}") for i in range(job["batch"])]
    t, cpu = time.perf_counter(), time.process_time()
    results = list(engine.process_many(pairs, pairs_per_batch=job["batch"]))
    return {"batch": job["batch"], "candidates": sum(r.counts.get("candidates", 0) for r in results), "boxes": sum(len(r.boxes) for r in results),
            "errors": [r.error for r in results if not hasattr(r, "boxes")], "rss_ready_mb": ready, "peak_rss_mb": process_memory_mb("VmHWM"),
            "seconds": time.perf_counter() - t, "cpu_seconds": time.process_time() - cpu}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--worker":
        Path(argv[2]).write_text(json.dumps(worker(json.loads(Path(argv[1]).read_text()))))
        return 0
    from benchmarks.data_juicer_peer import GATES, _pairs

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--batches", default="1,5,20", help="pairs per batch, one process each (default 1,5,20)")
    ap.add_argument("--gates", choices=sorted(GATES), default="open")
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    pair = _pairs(args.shared, "real", args.out / "pairs")[0]
    rows = []
    for batch in (int(b) for b in args.batches.split(",")):
        job_file, result_file = args.out / f"job-{batch}.json", args.out / f"result-{batch}.json"
        job_file.write_text(json.dumps({"models": str(args.models.resolve()), "params": GATES[args.gates], "pair": pair, "batch": batch}))
        proc = subprocess.run([sys.executable, "-m", __spec__.name, "--worker", str(job_file), str(result_file)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"batch {batch} failed:\n{proc.stderr[-4000:]}")
        rows.append(json.loads(result_file.read_text()))
        print(rows[-1], flush=True)
    command = f"python -m benchmarks.batch_memory --models MODELS --out {args.out} --batches {args.batches} --gates {args.gates}"
    header = ["pairs in the batch", "candidates", "final boxes", "RSS when ready", "peak RSS", "wall s", "CPU s"]
    table = [[str(r["batch"]), f"{r['candidates']:,}", f"{r['boxes']:,}", f"{r['rss_ready_mb']:.0f} MB", f"{r['peak_rss_mb']:.0f} MB",
              f"{r['seconds']:.0f}", f"{r['cpu_seconds']:.0f}"] for r in rows]  # fmt: skip
    save_record(args.out, "batch_memory", {"rows": rows, "gates": args.gates, "command": command}, header, table, f"gates {args.gates}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
