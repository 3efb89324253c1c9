"""Cold start and peak memory of the engine, configurations side by side, each run in a fresh process.

For each configuration and round (rounds interleaved): a new Python process imports the engine,
loads the caption data and the graphs ("ready": wall time from the parent's spawn, so interpreter
start and imports count), then runs the pairs. Reported per configuration, median over rounds:
time to ready, RSS when ready, peak RSS (VmHWM) over the whole run, wall and CPU seconds of the
pairs, the whole process's user and system CPU seconds and page faults, the kernel's huge-page
counters, and the candidates and final boxes (identical across configurations that compute the
same thing). A configuration named NAME+thp is NAME in a process started with glibc's huge-page
tunable (GLIBC_TUNABLES=glibc.malloc.hugetlb=1); the others start without it. One unrecorded
warm-up process first, so the model files are in the page cache and their checksums verified
("once"): this is the start of a worker on a host that already has the models, not the first
start after a reboot.

    python -m benchmarks.memory_start --models MODELS --out benchmarks/results/memory_start \
        [--configs default,memory-mmap,memory-off,int8,memory-mmap+thp] [--rounds 3] [--gates open|recipe] [--pairs real|pasted]
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

from benchmarks.machine import cpu_description, cpu_line, process_memory_mb  # noqa: E402
from imgdiff_onnx.engine import memory  # noqa: E402

# EngineSettings fields per configuration (everything else at its default)
CONFIGS: dict[str, dict] = {
    "default": {},
    "memory-trim": {"memory_release": "trim"},  # free heap pages returned after each stage
    "memory-mmap": {"memory_release": "mmap"},  # and buffers >= 4 MiB unmapped when freed
    "memory-off": {"memory_release": "off"},  # the C allocator left as it is
    "arena": {"memory_arena": True},  # onnxruntime's arena keeps every session's freed buffers
    "one-worker": {"workers": 1},  # one model call at a time on every core: FastSAM's two images one after the other
    "segment-together": {"segment_together": True},  # FastSAM's two images at once, one per worker
    "no-fastsam-arena": {"fastsam_arena": False},  # FastSAM's buffers from malloc, not the shrinking arena
    "together-no-arena": {"segment_together": True, "fastsam_arena": False},  # FastSAM as it ran before both
    "no-warm-up": {"warm_up": False},  # BLIP vision's first (memory-planning) run made in the first gate step, not at load
    "steps-32": {"windows_per_step": 32},  # gates score 32 windows at a time instead of 64
    "crop-batch-8": {"crop_batch_size": 8},  # CLIP (batch-invariant) scores 8 crops per call instead of 16
    "int8": {"precision": "int8"},
    "int8-trim": {"precision": "int8", "memory_release": "trim"},
    "fp32": {"precision": "fp32"},
}
# the same settings in a process started with glibc's huge-page tunable (imgdiff_onnx.engine.memory)
HUGE_PAGES = {"GLIBC_TUNABLES": memory.HUGE_PAGES_SETTING}
CONFIGS.update({f"{name}+thp": settings for name, settings in list(CONFIGS.items())})


def _environment(config: str) -> dict[str, str]:
    """The child's environment: this one, with the huge-page tunable for '+thp' configurations
    and without it otherwise (so that a parent started with it does not pass it on)."""
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    return env | HUGE_PAGES if config.endswith("+thp") else env


def _vmstat() -> dict[str, int]:
    """The kernel's huge-page and compaction counters (machine-wide: the benchmark runs alone)."""
    try:
        lines = Path("/proc/vmstat").read_text().splitlines()
    except OSError:
        return {}
    pairs = (line.split() for line in lines)
    return {k: int(v) for k, v in pairs if k.startswith(("thp_fault", "thp_split", "compact_stall", "compact_fail"))}


def worker(job: dict, spawned_at: float) -> dict:
    vmstat_before = _vmstat()
    from imgdiff_onnx import DifferenceAreaGenerator, EngineSettings, OperatorParams, PairInput
    from imgdiff_onnx.engine.captions import ensure_available

    ensure_available()
    engine = DifferenceAreaGenerator(job["models"], OperatorParams.from_mapping(job["params"]), EngineSettings(**CONFIGS[job["config"]]))
    ready = time.time() - spawned_at
    rss_ready = process_memory_mb("VmRSS")
    rows = []
    for p in job["pairs"]:
        t, cpu = time.perf_counter(), time.process_time()
        r = engine.process(PairInput(p["image1"], p["image2"], p["caption1"], p["caption2"], key=p["key"]))
        rows.append({"key": p["key"], "seconds": time.perf_counter() - t, "cpu_seconds": time.process_time() - cpu,
                     "candidates": r.counts.get("candidates", 0), "boxes": r.boxes.tolist()})  # fmt: skip
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "config": job["config"], "memory_release": engine.settings.memory_release, "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
        "page_faults": usage.ru_minflt, "user_s": usage.ru_utime, "system_s": usage.ru_stime,
        "kernel_huge_page_events": {k: v - vmstat_before.get(k, 0) for k, v in _vmstat().items()},
        "ready_s": ready, "load_s": engine.load_seconds, "rss_ready_mb": rss_ready, "peak_rss_mb": process_memory_mb("VmHWM"), "rows": rows,
    }  # fmt: skip


def _spawn(job: dict, out: Path, name: str) -> dict:
    job_file, result_file = out / f"job-{name}.json", out / f"result-{name}.json"
    job_file.write_text(json.dumps(job))
    spawned_at = time.time()
    command = [sys.executable, "-m", __spec__.name, "--worker", str(job_file), str(result_file), repr(spawned_at)]
    proc = subprocess.run(command, text=True, capture_output=True, env=_environment(job["config"]))
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{proc.stderr[-4000:]}")
    return json.loads(result_file.read_text())


def _table(by_config: dict[str, list[dict]], rounds: int) -> str:
    names = list(by_config)
    lines = [f"| median of {rounds} | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]

    def row(label, fn, fmt="{:.2f}"):
        lines.append(f"| {label} | " + " | ".join(fmt.format(statistics.median(fn(r) for r in by_config[n])) for n in names) + " |")

    row("ready: spawn to engine loaded (s)", lambda r: r["ready_s"])
    row("of which graphs loaded (s)", lambda r: r["load_s"])
    row("RSS when ready (MB)", lambda r: r["rss_ready_mb"], "{:.0f}")
    row("peak RSS, whole run (MB)", lambda r: r["peak_rss_mb"], "{:.0f}")
    row("pairs: wall s", lambda r: sum(x["seconds"] for x in r["rows"]), "{:.1f}")
    row("pairs: CPU s", lambda r: sum(x["cpu_seconds"] for x in r["rows"]), "{:.1f}")
    row("whole process: user CPU s", lambda r: r["user_s"], "{:.1f}")
    row("whole process: system CPU s", lambda r: r["system_s"], "{:.1f}")
    row("page faults, whole process (thousands)", lambda r: r["page_faults"] / 1000, "{:.0f}")
    row("huge pages faulted in (kernel, thousands)", lambda r: r["kernel_huge_page_events"].get("thp_fault_alloc", 0) / 1000, "{:.1f}")
    row("compaction stalls (kernel)", lambda r: r["kernel_huge_page_events"].get("compact_stall", 0), "{:.0f}")
    lines.append("| candidates / final boxes | " + " | ".join(
        ", ".join(f"{x['candidates']}/{len(x['boxes'])}" for x in by_config[n][0]["rows"]) for n in names) + " |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--worker":
        Path(argv[2]).write_text(json.dumps(worker(json.loads(Path(argv[1]).read_text()), float(argv[3]))))
        return 0
    from benchmarks.data_juicer_peer import GATES, _pairs

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--configs", default="default,memory-mmap,memory-off,int8", help=f"comma-separated, of: {', '.join(CONFIGS)}")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--gates", choices=sorted(GATES), default="open")
    parser.add_argument("--pairs", choices=("real", "pasted"), default="real")
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    args = parser.parse_args(argv)
    configs = [c.strip() for c in args.configs.split(",")]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown or args.rounds < 1:
        parser.error(f"unknown configuration(s) {unknown}; known: {', '.join(CONFIGS)}" if unknown else "--rounds must be >= 1")
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("NLTK_DATA", str((args.shared / "nltk_data").resolve()))
    base = {"models": str(args.models.resolve()), "params": GATES[args.gates], "pairs": _pairs(args.shared.resolve(), args.pairs, args.out / "pairs")}
    _spawn({**base, "config": configs[0], "pairs": []}, args.out, "warm-up")
    by_config: dict[str, list[dict]] = {c: [] for c in configs}
    for i in range(args.rounds):
        for c in configs:
            by_config[c].append(_spawn({**base, "config": c}, args.out, f"{c}-{i}"))
    cpu = cpu_description()
    boxes = {c: [[x["boxes"] for x in r["rows"]] for r in runs] for c, runs in by_config.items()}
    same = {c: all(b == per_round[0] for b in per_round) for c, per_round in boxes.items()}
    table = f"{cpu_line(cpu)}\n\ngates: {args.gates}; pairs: {', '.join(p['key'] for p in base['pairs'])}\n\n{_table(by_config, args.rounds)}\n"
    (args.out / "table.md").write_text(table)
    (args.out / "summary.json").write_text(json.dumps({"cpu": cpu, "gates": args.gates, "configs": configs, "same_boxes_every_round": same, "runs": by_config}, indent=1))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
