"""One process vs Ray on one machine: the same dataset through `python -m imgdiff_onnx run` as
  single 1xT   one process, one model call at a time on all T cores (--workers 1 --threads T)
  single Tx1   one process, T model calls at once, 1 thread each (--workers T --threads 1; the default)
  ray 1xT      --ray, 1 actor x T threads
  ray Tx1      --ray, T actors x 1 thread
each as its own command (its own Ray), wall time from start to the last fsync'ed line (model
loading and Ray start-up included), CPU time of the single-process runs (user + system of the
child; Ray's worker processes are not its children, so none is given for Ray), and the outputs
compared line for line (with --timings off they hold no timing).

Data: the real shared pair repeated --pairs times (nothing is cached across records, so each
copy costs a full pair; generated pairs give 300 boxes per image with these random weights and
take minutes each) plus --generated generated pairs; Data-Juicer's default parameters.

    python benchmarks/ray_scaling.py --models MODELDIR --out benchmarks/results/ray_scaling --pairs 8
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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
    parser.add_argument("--precision", default="default", help="int8, fp32, a per-model choice, or default (the engine's)")
    parser.add_argument("--pairs-per-batch", type=int, default=1)
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    args = parser.parse_args()
    os.environ.setdefault("NLTK_DATA", str(args.shared / "nltk_data"))
    dataset = _dataset(args.shared.resolve(), args.pairs, args.generated, (args.out / "pairs").resolve())
    total = args.pairs + args.generated
    t = args.cores
    configs = {
        f"single 1x{t}": ["--workers", "1", "--threads", str(t)],
        f"single {t}x1": ["--workers", str(t), "--threads", "1"],
        f"ray 1x{t}": ["--ray", "--ray-num-cpus", str(t), "--actors", "1", "--threads", str(t)],
        f"ray {t}x1": ["--ray", "--ray-num-cpus", str(t), "--actors", str(t), "--threads", "1"],
    }
    results = {}
    outputs = {}
    for name, extra in configs.items():
        output = args.out / f"out_{name.replace(' ', '_')}.jsonl"
        cmd = [sys.executable, "-m", "imgdiff_onnx", "run", "--models", str(args.models), "--input", str(dataset), "--output", str(output),
               "--overwrite", "--quiet", "--pairs-per-batch", str(args.pairs_per_batch), *extra]  # fmt: skip
        if args.precision != "default":
            cmd += ["--precision", args.precision]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        with open(args.out / f"log_{name.replace(' ', '_')}.txt", "w") as log:  # a file, not a pipe: Ray logs a lot
            subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)
        seconds = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        outputs[name] = output.read_text()
        results[name] = {"seconds": round(seconds, 1), "pairs_per_hour": round(total * 3600 / seconds, 1), "command": " ".join(cmd[1:])}
        if name.startswith("single"):
            results[name].update(cpu_seconds=round(cpu, 1), cores_busy=round(cpu / seconds, 2))
        print(f"{name}: {seconds:.1f} s, {total * 3600 / seconds:.1f} pairs/h, cpu {cpu:.1f} s", flush=True)
    same = len(set(outputs.values())) == 1
    base = results[f"single 1x{t}"]["seconds"]
    for r in results.values():
        r["speed_vs_single"] = round(base / r["seconds"], 2)
    from benchmarks.machine import cpu_description, cpu_line

    summary = {"cpu": cpu_line(cpu_description()), "pairs": total, "real_pair_copies": args.pairs, "generated": args.generated, "cores": t, "precision": args.precision, "models": str(args.models), "identical_outputs": same, "runs": results}
    (args.out / "ray_scaling.json").write_text(json.dumps(summary, indent=2))
    lines = [f"| configuration | wall s | pairs/hour | vs single 1x{t} | CPU s | cores busy |", "|---|---|---|---|---|---|"]
    lines += [f"| {k} | {v['seconds']} | {v['pairs_per_hour']} | {v['speed_vs_single']}x | {v.get('cpu_seconds', '-')} | {v.get('cores_busy', '-')} |"
              for k, v in results.items()]  # fmt: skip
    lines.append(f"\n{summary['cpu']}; {total} pairs ({args.pairs} x the real pair, {args.generated} generated), {args.precision}, identical outputs: {same}")
    (args.out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
