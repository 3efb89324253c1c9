"""Node loss: a two-node Ray cluster on this one machine loses its second node in the middle of a
`run --ray`; the results file must equal an uninterrupted run's, line for line.

The cluster is Ray's own multi-node simulator (`ray.cluster_utils.Cluster`): a head raylet and a
second raylet, each with --cpus-per-node CPUs, so the run's actors (one CPU each) sit on both
nodes. Once --kill-after of the lines are written, the second node's processes are killed (not a
graceful leave). The run retries the dead actor's records on the survivors and, with no CPUs left
for a replacement, goes on with fewer actors.

    python -m benchmarks.ray_node_loss --out benchmarks/results/ray_node_loss [--models MODELS] [--pairs 60]
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

from benchmarks.machine import cpu_description, cpu_line  # noqa: E402
from benchmarks.soak import dataset, tiny_models  # noqa: E402


def _run_cmd(models: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "imgdiff_onnx", "run", "--models", str(models), "--input", str(data), "--output", str(out),
            "--params", str(data.parent / "params.json"), "--overwrite", "--quiet", "--threads", "1", *extra]  # fmt: skip


def node_loss(models: Path, work: Path, pairs: int, cpus_per_node: int, kill_after: float) -> dict:
    from ray.cluster_utils import Cluster

    data = dataset(work, pairs)
    reference = work / "reference.jsonl"
    subprocess.run(_run_cmd(models, data, reference, "--pairs-per-batch", "2"), check=True)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": cpus_per_node, "include_dashboard": False})
    try:
        second = cluster.add_node(num_cpus=cpus_per_node)
        cluster.wait_for_nodes()
        out = work / "ray.jsonl"
        actors = 2 * cpus_per_node
        cmd = _run_cmd(models, data, out, "--ray", cluster.address, "--actors", str(actors), "--pairs-per-batch", "2")
        started = time.perf_counter()
        log = open(work / "run.stderr", "w+")  # a file, not a pipe: an undrained pipe would block the run
        proc = subprocess.Popen(cmd, stderr=log, text=True)
        lines_at_kill = None
        while proc.poll() is None:
            lines = out.read_bytes().count(b"\n") if out.exists() else 0
            if lines_at_kill is None and lines >= kill_after * pairs:
                cluster.remove_node(second, allow_graceful=False)
                lines_at_kill, killed_at = lines, time.perf_counter() - started
            time.sleep(0.05)
        log.seek(0)
        stderr = log.read()
        log.close()
        seconds = time.perf_counter() - started
    finally:
        cluster.shutdown()
    same = out.exists() and out.read_bytes() == reference.read_bytes()
    return {
        "pairs": pairs,
        "actors": actors,
        "cpus_per_node": cpus_per_node,
        "exit_status": proc.returncode,
        "lines_at_kill": lines_at_kill,
        "killed_at_s": None if lines_at_kill is None else round(killed_at, 1),
        "seconds": round(seconds, 1),
        "lines_written": out.read_bytes().count(b"\n") if out.exists() else 0,
        "identical_to_uninterrupted_run": same,
        "warnings": [line for line in stderr.splitlines() if "WARNING" in line and "imgdiff_onnx" in line],
        "command": cmd,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--models", type=Path, help="model folder (default: export tiny random-init models into --out)")
    parser.add_argument("--pairs", type=int, default=60)
    parser.add_argument("--cpus-per-node", type=int, default=1)
    parser.add_argument("--kill-after", type=float, default=0.25, help="fraction of lines written when the second node is killed")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    models = args.models or tiny_models(args.out / "models-tiny")
    with tempfile.TemporaryDirectory(prefix="node-loss-") as tmp:
        result = node_loss(models, Path(tmp), args.pairs, args.cpus_per_node, args.kill_after)
    result["cpu"] = cpu_description()
    (args.out / "node_loss.json").write_text(json.dumps(result, indent=1))
    print(cpu_line(result["cpu"]))
    print(json.dumps({k: v for k, v in result.items() if k not in ("command", "cpu")}, indent=1))
    return 0 if result["identical_to_uninterrupted_run"] and result["exit_status"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
