"""Resume of a shard run with many shards: how long `run --resume` takes, from the command's start
to the last shard's results, when all but one of N shards are committed.

N WebDataset shards of one small sample each (captions whose difference names no object, so each
pair stops before any model: the run's cost is the shards' handling), run once to the end with the
real command; then the last shard's results file is removed (as if that shard were in flight) and
`run --resume` is timed as a user starts it.

    python -m benchmarks.shard_resume --models MODELS --out benchmarks/results/shard_resume [--shards 10000]
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from benchmarks.machine import save_record

ROOT = Path(__file__).resolve().parents[1]


def _shards(folder: Path, count: int) -> None:
    import cv2
    import numpy as np

    ok, png = cv2.imencode(".png", np.full((32, 32, 3), 128, np.uint8))
    assert ok
    meta = json.dumps({"caption1": "A cat on a mat.", "caption2": "A cat on a mat, sleeping."}).encode()
    folder.mkdir(parents=True)
    for n in range(count):
        with tarfile.open(folder / f"{n:05d}.tar", "w") as archive:
            for name, data in ((f"{n:09d}.img1.png", png.tobytes()), (f"{n:09d}.img2.png", png.tobytes()), (f"{n:09d}.json", meta)):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--shards", type=int, default=10_000)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="shard-resume-"))
    try:
        _shards(work / "shards", args.shards)
        command = [sys.executable, "-m", "imgdiff_onnx", "run", "--models", str(args.models.resolve()), "--input", "shards",
                   "--output", "results", "--quiet"]  # fmt: skip
        started = time.perf_counter()
        subprocess.run(command, cwd=work, check=True)
        first = time.perf_counter() - started
        last = work / "results" / f"{args.shards - 1:05d}.jsonl"
        last.unlink()
        started = time.perf_counter()
        subprocess.run(command + ["--resume"], cwd=work, check=True)
        resume = time.perf_counter() - started
        assert last.is_file() and len(list((work / "results").glob("*.jsonl"))) == args.shards
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    save_record(args.out, "shard_resume", {"shards": args.shards, "first_run_s": first, "resume_s": resume},
                ["shards", "first run, wall s", "resume with one shard left, wall s (from the command's start)"],
                [[f"{args.shards:,}", f"{first:.1f}", f"{resume:.2f}"]], "tiny models; every pair stops before a model")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
