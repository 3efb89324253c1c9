"""Ray scale-out on one machine: the same dataset through `python -m imgdiff_onnx run` as
  single   one process, --threads T (all the cores)
  1xT      --ray, 1 actor x T threads
  Tx1      --ray, T actors x 1 thread
each as its own command (its own Ray), wall time from start to the last fsync'ed line (model
loading and Ray start-up included), and the outputs compared line for line.

Data: the real shared pair repeated --pairs times (nothing is cached across records, so each
copy costs a full pair; generated pairs give 300 boxes per image with these random weights and
take minutes each) plus --generated generated pairs; Data-Juicer's default parameters.

    python benchmarks/ray_scaling.py --models MODELDIR --out benchmarks/results/ray_scaling --pairs 8
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _dataset(shared: Path, pairs: int, generated: int, work: Path) -> Path:
    import cv2

    from imgdiff_onnx import samples

    work.mkdir(parents=True, exist_ok=True)
    real = {
        "caption1": "A plane in the sky flying alone.",
        "caption2": "A boat in the ocean sailing alone.",
        "image_path1": str(shared / "data/pairs/img_pair_1.jpg"),
        "image_path2": str(shared / "data/pairs/img_pair_2.jpg"),
    }
    records = [{"id": f"real{i}", **real} for i in range(pairs)]
    for i in range(generated):
        s = samples.pair(200 + i, 768, 1024)
        p1, p2 = work / f"gen{i}_1.png", work / f"gen{i}_2.png"
        cv2.imwrite(str(p1), s.image1[:, :, ::-1])
        cv2.imwrite(str(p2), s.image2[:, :, ::-1])
        records.append({"id": f"gen{i}", "caption1": s.caption1, "caption2": s.caption2, "image_path1": str(p1), "image_path2": str(p2)})
    path = work / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--pairs", type=int, default=6, help="copies of the real pair")
    parser.add_argument("--generated", type=int, default=0, help="generated 768x1024 pairs added")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--precision", choices=("int8", "fp32"), default="int8")
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    args = parser.parse_args()
    os.environ.setdefault("NLTK_DATA", str(args.shared / "nltk_data"))
    dataset = _dataset(args.shared.resolve(), args.pairs, args.generated, (args.out / "pairs").resolve())
    total = args.pairs + args.generated
    t = args.cores
    configs = {
        "single": ["--threads", str(t)],
        f"ray 1x{t}": ["--ray", "--ray-num-cpus", str(t), "--actors", "1", "--threads", str(t)],
        f"ray {t}x1": ["--ray", "--ray-num-cpus", str(t), "--actors", str(t), "--threads", "1"],
    }
    results = {}
    outputs = {}
    for name, extra in configs.items():
        output = args.out / f"out_{name.replace(' ', '_')}.jsonl"
        cmd = [sys.executable, "-m", "imgdiff_onnx", "run", "--models", str(args.models), "--input", str(dataset), "--output", str(output),
               "--overwrite", "--quiet", "--precision", args.precision, "--pairs-per-batch", "1", *extra]  # fmt: skip
        started = time.perf_counter()
        subprocess.run(cmd, check=True)
        seconds = time.perf_counter() - started
        outputs[name] = output.read_text()
        results[name] = {"seconds": round(seconds, 1), "pairs_per_hour": round(total * 3600 / seconds, 1), "command": " ".join(cmd[1:])}
        print(f"{name}: {seconds:.1f} s, {total * 3600 / seconds:.1f} pairs/h", flush=True)
    same = len(set(outputs.values())) == 1
    base = results["single"]["seconds"]
    for r in results.values():
        r["speed_vs_single"] = round(base / r["seconds"], 2)
    summary = {"pairs": total, "real_pair_copies": args.pairs, "generated": args.generated, "cores": t, "precision": args.precision, "models": str(args.models), "identical_outputs": same, "runs": results}
    (args.out / "ray_scaling.json").write_text(json.dumps(summary, indent=2))
    lines = ["| configuration | wall s | pairs/hour | vs single |", "|---|---|---|---|"]
    lines += [f"| {k} | {v['seconds']} | {v['pairs_per_hour']} | {v['speed_vs_single']}x |" for k, v in results.items()]
    lines.append(f"\n{total} pairs ({args.pairs} x the real pair, {args.generated} generated), {args.precision}, identical outputs: {same}")
    (args.out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
