"""One process vs Ray on one machine: the same dataset through `python -m imgdiff_onnx run` as
  single-1xT   one process, one model call at a time on all T cores (--workers 1 --threads T)
  single-Tx1   one process, T model calls at once, 1 thread each (--workers T --threads 1; the default)
  ray-1xT      --ray, 1 actor x T threads
  ray-Tx1      --ray, T actors x 1 thread
  baseline     another checkout of this project (--baseline-code, e.g. a git worktree of an older
               commit) with its own default settings and its own model folder (--baseline-models)
each as its own command (its own Ray), wall time from start to the last fsync'ed line (model
loading and Ray start-up included). CPU time two ways: user + system of the command's children
(Ray's worker processes are not its children, so none for Ray), and the whole machine's busy
time from /proc/stat over the run, which counts Ray's workers too (the machine should be idle
otherwise), with the time the hypervisor gave to other guests (steal), which says how much a
run's speed was the host's doing.

--rounds N runs every configuration N times, round by round, each round starting one
configuration later than the last, so that a host whose speed drifts does not favour one
configuration; ratios are taken within each round (against --reference) and their median is
reported with the per-round values, and best against best (another guest on the host only ever
slows a run down). Every output's boxes are compared record by record. --resummarize recomputes
the summary and table from a finished run's ray_scaling.json.

Data: the real shared pair repeated --pairs times (nothing is cached across records, so each
copy costs a full pair; generated pairs give 300 boxes per image with these random weights and
take minutes each) plus --generated generated pairs; Data-Juicer's default parameters.

    python -m benchmarks.ray_scaling --models MODELDIR --out benchmarks/results/ray_scaling --pairs 8
    python -m benchmarks.ray_scaling --models MODELDIR --out OUT --pairs 3 --rounds 3 \
        --configs baseline,single-2x1,ray-2x1 --baseline-code OLD_WORKTREE --baseline-models OLD_MODELDIR
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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


def machine_cpu_seconds(stat: Path = Path("/proc/stat")) -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine since boot, from /proc/stat's first line:
    busy = user + nice + system + irq + softirq (guest time is already inside user); NaN off Linux."""
    try:
        fields = stat.read_text().splitlines()[0].split()
    except OSError:
        return float("nan"), float("nan")
    values = [int(v) for v in fields[1:]]
    values += [0] * (8 - len(values))
    user, nice, system, _idle, _iowait, irq, softirq, steal = values[:8]
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / tick, steal / tick


def config_args(name: str, cores: int) -> list[str]:
    """The command-line options of a configuration name (single-1xT, single-Tx1, ray-1xT, ray-Tx1, baseline)."""
    t = str(cores)
    table = {
        f"single-1x{t}": ["--workers", "1", "--threads", t],
        f"single-{t}x1": ["--workers", t, "--threads", "1"],
        f"ray-1x{t}": ["--ray", "--ray-num-cpus", t, "--actors", "1", "--threads", t],
        f"ray-{t}x1": ["--ray", "--ray-num-cpus", t, "--actors", t, "--threads", "1"],
        "baseline": [],
    }
    if name not in table:
        raise SystemExit(f"unknown configuration {name!r}; choose from {', '.join(table)}")
    return table[name]


def boxes_by_record(text: str) -> dict[str, object]:
    """Each output line's record id -> its boxes (or its error), for comparing runs of different code."""
    found = {}
    for line in text.splitlines():
        row = json.loads(line)
        result = row.get("imgdiff", {})
        found[row.get("id")] = result.get("boxes", result.get("error"))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, help="model folder (required unless --resummarize)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--pairs", type=int, default=6, help="copies of the real pair")
    parser.add_argument("--generated", type=int, default=0, help="generated 768x1024 pairs added")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--precision", default="default", help="int8, fp32, a per-model choice, or default (the engine's)")
    parser.add_argument("--pairs-per-batch", type=int, help="passed on to every configuration (default: each its own default)")
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    parser.add_argument("--configs", default="", help="comma-separated; default: single-1xT,single-Tx1,ray-1xT,ray-Tx1 (T = --cores)")
    parser.add_argument("--rounds", type=int, default=1, help="times every configuration runs, interleaved")
    parser.add_argument("--reference", default="", help="configuration the ratios are against (default: the first)")
    parser.add_argument("--baseline-code", type=Path, help="checkout whose `python -m imgdiff_onnx run` the baseline configuration runs")
    parser.add_argument("--baseline-models", type=Path, help="model folder for the baseline (default: --models)")
    parser.add_argument("--resummarize", action="store_true", help="only recompute the summary and table of the runs in --out/ray_scaling.json")
    args = parser.parse_args()
    if args.resummarize:
        summary = json.loads((args.out / "ray_scaling.json").read_text())
        runs = {name: config["runs"] for name, config in summary["configs"].items()}
        summary["configs"] = summarize(runs, summary["reference"], summary["pairs"])
        write_summary(summary, args.out)
        return 0
    if args.models is None:
        raise SystemExit("--models is required")
    os.environ.setdefault("NLTK_DATA", str(args.shared / "nltk_data"))
    t = args.cores
    names = [c.strip() for c in (args.configs or f"single-1x{t},single-{t}x1,ray-1x{t},ray-{t}x1").split(",") if c.strip()]
    for name in names:
        config_args(name, t)
    if "baseline" in names and args.baseline_code is None:
        raise SystemExit("the baseline configuration needs --baseline-code")
    reference = args.reference or names[0]
    if reference not in names:
        raise SystemExit(f"--reference {reference!r} is not among --configs")
    if args.rounds < 1:
        raise SystemExit("--rounds must be >= 1")
    dataset = _dataset(args.shared.resolve(), args.pairs, args.generated, (args.out / "pairs").resolve())
    total = args.pairs + args.generated
    runs: dict[str, list[dict]] = {name: [] for name in names}
    boxes: dict[str, dict] = {}
    for round_index in range(args.rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            stem = f"{name}_r{round_index}"
            output = (args.out / f"out_{stem}.jsonl").resolve()
            baseline = name == "baseline"
            code = args.baseline_code.resolve() if baseline else ROOT  # its package comes first on the path
            models = (args.baseline_models or args.models) if baseline else args.models
            cmd = [sys.executable, "-m", "imgdiff_onnx", "run", "--models", str(models.resolve()), "--input", str(dataset),
                   "--output", str(output), "--overwrite", "--quiet", *config_args(name, t)]  # fmt: skip
            if args.pairs_per_batch is not None:
                cmd += ["--pairs-per-batch", str(args.pairs_per_batch)]
            if args.precision != "default" and not baseline:
                cmd += ["--precision", args.precision]
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(code), os.environ.get("PYTHONPATH")]))}
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            busy0, steal0 = machine_cpu_seconds()
            started = time.perf_counter()
            with open(args.out / f"log_{stem}.txt", "w") as log:  # a file, not a pipe: Ray logs a lot
                subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=code, env=env)
            seconds = time.perf_counter() - started
            busy1, steal1 = machine_cpu_seconds()
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            run = {"round": round_index, "seconds": round(seconds, 1), "machine_cpu_seconds": round(busy1 - busy0, 1),
                   "steal_seconds": round(steal1 - steal0, 1), "command": " ".join(cmd[1:])}  # fmt: skip
            if not name.startswith("ray"):
                run["cpu_seconds"] = round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 1)
            runs[name].append(run)
            boxes[stem] = boxes_by_record(output.read_text())
            print(f"round {round_index} {name}: {seconds:.1f} s, machine cpu {run['machine_cpu_seconds']} s, steal {run['steal_seconds']} s", flush=True)
    first = next(iter(boxes.values()))
    same = all(b == first for b in boxes.values())
    from benchmarks.machine import cpu_description, cpu_line

    summary = {"cpu": cpu_line(cpu_description()), "pairs": total, "real_pair_copies": args.pairs, "generated": args.generated, "cores": t,
               "precision": args.precision, "models": str(args.models), "baseline_code": str(args.baseline_code or ""),
               "baseline_models": str(args.baseline_models or args.models) if "baseline" in names else "", "rounds": args.rounds,
               "reference": reference, "identical_boxes": same, "configs": summarize(runs, reference, total)}  # fmt: skip
    write_summary(summary, args.out)
    return 0 if same else 1


def summarize(runs: dict[str, list[dict]], reference: str, total: int) -> dict[str, dict]:
    """Per configuration: medians, the best (shortest) run, and speed against the reference
    configuration per round (paired), as the median of those and as best against best. Another
    guest on the host only ever slows a run down, so the best run is the least disturbed one."""
    results = {}
    ref = runs[reference]
    for name, rows in runs.items():
        speed = [r0["seconds"] / r1["seconds"] for r0, r1 in zip(ref, rows)]
        cpu_ratio = [r1["machine_cpu_seconds"] / r0["machine_cpu_seconds"] for r0, r1 in zip(ref, rows)]
        best = min(r["seconds"] for r in rows)
        median = statistics.median(r["seconds"] for r in rows)
        results[name] = {
            "median_seconds": round(median, 2),
            "best_seconds": best,
            "pairs_per_hour": round(total * 3600 / median, 1),
            "median_machine_cpu_seconds": round(statistics.median(r["machine_cpu_seconds"] for r in rows), 2),
            "best_machine_cpu_seconds": min(r["machine_cpu_seconds"] for r in rows),
            "speed_vs_reference": [round(v, 3) for v in speed],
            "median_speed_vs_reference": round(statistics.median(speed), 3),
            "best_speed_vs_reference": round(min(r["seconds"] for r in ref) / best, 3),
            "median_machine_cpu_vs_reference": round(statistics.median(cpu_ratio), 3),
            "runs": rows,
        }
    return results


def write_summary(summary: dict, out: Path) -> None:
    """ray_scaling.json and table.md in `out`, and the table on stdout."""
    (out / "ray_scaling.json").write_text(json.dumps(summary, indent=2))
    reference = summary["reference"]
    lines = [f"| configuration | wall s per round | median | best | speed vs {reference} per round | median | best vs best "
             f"| machine CPU s (median, best) | CPU vs {reference} (median) | steal s |",
             "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, r in summary["configs"].items():
        walls = ", ".join(str(x["seconds"]) for x in r["runs"])
        steal = ", ".join(str(x["steal_seconds"]) for x in r["runs"])
        speeds = ", ".join(f"{v:.2f}" for v in r["speed_vs_reference"])
        lines.append(f"| {name} | {walls} | {r['median_seconds']} | {r['best_seconds']} | {speeds} | **{r['median_speed_vs_reference']:.2f}x** "
                     f"| **{r['best_speed_vs_reference']:.2f}x** | {r['median_machine_cpu_seconds']}, {r['best_machine_cpu_seconds']} "
                     f"| {r['median_machine_cpu_vs_reference']:.2f} | {steal} |")  # fmt: skip
    lines.append(f"\n{summary['cpu']}; {summary['pairs']} pairs ({summary['real_pair_copies']} x the real pair, {summary['generated']} generated), "
                 f"{summary['precision']}, {summary['rounds']} round(s), identical boxes: {summary['identical_boxes']}")  # fmt: skip
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
