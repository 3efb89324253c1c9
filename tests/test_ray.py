"""`run --ray`: a local Ray with 2 CPUs started by the run; same output file as the single-process
run, resumable, and a record whose actor dies is retried once, then reported, never dropped."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .cli_helpers import _read, _run_args

pytest.importorskip("ray")


def _cli_env(*args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "imgdiff_onnx", *args], capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


RAY_2X1 = ("--ray", "--ray-num-cpus", "2", "--actors", "2", "--pairs-per-batch", "2")


@pytest.fixture()
def single(tiny_models, dataset, tmp_path):  # noqa: F811
    out = tmp_path / "single.jsonl"
    _cli_env(*_run_args(tiny_models, dataset, out, "--pairs-per-batch", "2"))
    return out


def test_ray_run_writes_the_same_file_as_the_single_process_run(tiny_models, dataset, single, tmp_path):  # noqa: F811
    out = tmp_path / "ray.jsonl"
    # --ray without an address starts a Ray of its own: it neither joins the cluster RAY_ADDRESS
    # names (here nothing listens) nor one already running on this machine
    _cli_env(*_run_args(tiny_models, dataset, out, *RAY_2X1), env={"RAY_ADDRESS": "127.0.0.1:9"})
    assert out.read_text() == single.read_text()
    assert sum(r["imgdiff"]["status"] == "ok" for r in _read(out)) == 9  # the 3 bad lines stay errors


def test_ray_run_takes_a_per_model_precision(tiny_models, dataset, tmp_path):  # noqa: F811
    single, ray = tmp_path / "single.jsonl", tmp_path / "ray.jsonl"
    _cli_env(*_run_args(tiny_models, dataset, single, "--pairs-per-batch", "2", "--precision", "int8,clip=fp32"))
    _cli_env(*_run_args(tiny_models, dataset, ray, *RAY_2X1, "--precision", "int8,clip=fp32"))
    assert ray.read_text() == single.read_text()
    proc = _cli_env(*_run_args(tiny_models, dataset, tmp_path / "bad.jsonl", *RAY_2X1, "--precision", "clip=int4"), check=False)
    assert proc.returncode == 2 and "clip must be fp32, int8 or banded" in proc.stderr


def test_ray_run_resumes_like_the_single_process_run_and_keeps_its_scores(tiny_models, dataset, single, tmp_path):  # noqa: F811
    out = tmp_path / "ray.jsonl"
    _cli_env(*_run_args(tiny_models, dataset, out, *RAY_2X1, "--limit", "5", "--keep-scores"))
    assert len(out.read_text().splitlines()) == 5
    _cli_env(*_run_args(tiny_models, dataset, out, *RAY_2X1, "--resume", "--keep-scores"))
    assert out.read_text() == single.read_text()  # a kept-scores run writes the gated run's lines
    # the actors' sheets reached the driver: a retune at the run's own thresholds writes the same file
    _cli_env("retune", "--input", str(out), "--params", str(dataset.parent / "params.json"), "--output", str(tmp_path / "again.jsonl"), "--quiet")
    assert (tmp_path / "again.jsonl").read_text() == single.read_text()


def test_dead_actor_record_is_retried_once_then_reported(tiny_models, dataset, single, tmp_path):  # noqa: F811
    # "a" kills its actor the first time only: retried, then ok. "c" kills it every time:
    # retried once, then an error line. Records that shared a batch with them are unharmed.
    out = tmp_path / "ray.jsonl"
    args = [sys.executable, "-m", "tests.ray_faults", "a~,c", str(tmp_path), *_run_args(tiny_models, dataset, out, *RAY_2X1)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=900, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-6000:]
    assert (tmp_path / "crashed-a").exists()
    got, want = _read(out), _read(single)
    assert len(got) == len(want) == 12
    for g, w in zip(got, want):
        if g.get("id") == "c":
            assert g["imgdiff"]["status"] == "error" and "worker died twice" in g["imgdiff"]["error"]
            assert g["imgdiff"]["boxes"] == [] and g["imgdiff"]["line"] == w["imgdiff"]["line"]
        else:
            assert g == w
    assert "died" in proc.stderr


def test_more_actor_threads_than_granted_cpus_is_refused(tiny_models, dataset, tmp_path):  # noqa: F811
    out = tmp_path / "ray.jsonl"
    proc = _cli_env(*_run_args(tiny_models, dataset, out, "--ray", "--ray-num-cpus", "2", "--actors", "2", "--threads", "2"), check=False)
    assert proc.returncode == 2
    assert "2 actors x 2 threads = 4 CPUs, but this Ray cluster grants 2" in proc.stderr
    assert not out.exists() or out.read_text() == ""


def test_missing_model_folder_is_refused_before_any_actor_starts(dataset, tmp_path):  # noqa: F811
    proc = _cli_env(*_run_args(tmp_path / "nomodels", dataset, tmp_path / "ray.jsonl", "--ray", "--ray-num-cpus", "2"), check=False)
    assert proc.returncode == 2 and "no manifest.json" in proc.stderr


def test_a_corrupt_model_folder_is_refused_on_the_driver_with_no_result_line(tiny_models, dataset, tmp_path):  # noqa: F811
    import shutil

    copy = tmp_path / "models"
    shutil.copytree(tiny_models, copy)
    graph = copy / "blip_vision.int8.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other contents
    graph.write_bytes(bytes(data))
    out = tmp_path / "ray.jsonl"
    proc = _cli_env(*_run_args(copy, dataset, out, *RAY_2X1, "--model-check", "always"), check=False)
    assert proc.returncode == 2 and "blip_vision.int8.onnx: contents differ" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


def test_actors_that_cannot_load_the_engine_stop_the_run_instead_of_writing_errors(tiny_models, dataset, tmp_path):  # noqa: F811
    out = tmp_path / "ray.jsonl"
    args = [sys.executable, "-m", "tests.ray_faults", "@init", str(tmp_path), *_run_args(tiny_models, dataset, out, *RAY_2X1)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=900, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 2, proc.stderr[-6000:]
    assert "a Ray actor could not load the engine" in proc.stderr and "no model folder at this path on this node" in proc.stderr
    assert not out.exists() and not (tmp_path / ".ray.jsonl.run.json").exists()


def test_sigterm_stops_a_ray_run_cleanly_and_resume_completes_it(tiny_models, dataset, single, tmp_path):  # noqa: F811
    import signal
    import time

    out = tmp_path / "ray.jsonl"
    from .conftest import imgdiff_command

    args = imgdiff_command(*_run_args(tiny_models, dataset, out, *RAY_2X1))
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and not (out.exists() and out.read_bytes().count(b"\n") >= 2):
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be stopped"
    os.kill(proc.pid, signal.SIGTERM)
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 143, stderr[-3000:]
    n = out.read_bytes().count(b"\n")
    assert f"stopped by SIGTERM: {n} of 12 input lines are in {out}" in stderr
    assert single.read_text().startswith(out.read_text())
    _cli_env(*_run_args(tiny_models, dataset, out, *RAY_2X1, "--resume"))
    assert out.read_text() == single.read_text()


def test_a_dead_actor_is_replaced_only_while_the_cluster_has_cpus_for_it():
    from imgdiff_onnx.runs.ray_run import _room_for_one_more

    class FakeRay:
        def __init__(self, cpus: int):
            self.cpus = cpus

        def cluster_resources(self) -> dict:
            return {"CPU": float(self.cpus)}

    # 2 actors x 1 thread; one died. Both nodes alive (2 CPUs): replace it.
    assert _room_for_one_more(FakeRay(2), [False, False], threads=1)
    # its node left (1 CPU): a replacement would never be scheduled, so the slot retires
    assert not _room_for_one_more(FakeRay(1), [False, False], threads=1)
    # one slot already retired: the last live actor died, 1 CPU left: replace it
    assert _room_for_one_more(FakeRay(1), [True, False], threads=1)
    assert not _room_for_one_more(FakeRay(3), [False, False], threads=2)


def _pool_dispatching(batches: int, actors: int, in_flight: int = 2):
    """The driver's pool after its first dispatch, on stand-in actors that only record their calls."""
    from imgdiff_onnx.runs.ray_run import RayOptions, _ActorPool

    class Actor:
        def __init__(self, index: int):
            self.index, self.calls = index, []
            self.process = self  # actor.process.remote(lines, timings)

        def remote(self, lines, timings):
            self.calls.append(lines)
            return (self.index, len(self.calls))  # the call's handle

    made: list[Actor] = []

    def new_actor() -> Actor:
        made.append(Actor(len(made)))
        return made[-1]

    reader = iter([[f"line {b}"] for b in range(batches)])
    pool = _ActorPool(None, new_actor, reader, None, RayOptions(actors=actors, calls_in_flight_per_actor=in_flight), timings=False)
    pool._refill()
    pool._dispatch()
    return pool, made


def test_batches_spread_over_every_actor_before_any_gets_a_second():
    # two batches, two actors: one each (filling the first actor's two calls in flight left the
    # second idle, and a short run took twice as long)
    pool, actors = _pool_dispatching(batches=2, actors=2)
    assert [a.calls for a in actors] == [[["line 0"]], [["line 1"]]] and pool.busy == [1, 1]
    pool, actors = _pool_dispatching(batches=3, actors=2)
    assert [len(a.calls) for a in actors] == [2, 1] and not pool.queue
    pool, actors = _pool_dispatching(batches=4, actors=3)
    assert [len(a.calls) for a in actors] == [2, 1, 1]
    # more batches than calls in flight: each actor gets its two; the seventh is not read yet
    pool, actors = _pool_dispatching(batches=7, actors=3)
    assert [len(a.calls) for a in actors] == [2, 2, 2] and len(pool.queue) == 0 and pool.busy == [2, 2, 2]
    # a retry waits for an idle actor and then runs alone on it
    from imgdiff_onnx.runs.ray_run import _Unit

    pool.busy[1] = 0
    pool.queue.append(_Unit(9, ["again"], retry=True))
    pool.queue.append(_Unit(10, ["after"]))
    pool._dispatch()
    assert actors[1].calls[-1] == ["again"] and pool.alone == [False, True, False] and [u.seq for u in pool.queue] == [10]


def test_losing_a_node_mid_run_gives_the_uninterrupted_output(tiny_models, tmp_path):
    # Ray's two-node simulator on this machine: the second raylet (and its actor) is killed once a
    # quarter of the lines are written; the run must go on with the survivor, line for line equal.
    from benchmarks.ray_node_loss import node_loss

    result = node_loss(tiny_models, tmp_path, pairs=24, cpus_per_node=1, kill_after=0.25)
    assert result["lines_at_kill"] is not None and result["lines_at_kill"] < 24, "the node was not killed mid-run"
    assert result["exit_status"] == 0 and result["lines_written"] == 24
    assert result["identical_to_uninterrupted_run"]
    assert any("died" in w for w in result["warnings"])
