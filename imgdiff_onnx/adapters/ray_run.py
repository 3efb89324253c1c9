"""Scale-out on Ray: the JSONL run with a pool of engine actors instead of one engine.

The driver reads the JSONL (resolving relative image paths against the file's folder, as the
single-process run does), sends batches of records to actors that each hold one engine (models
loaded once per actor, `threads` onnxruntime threads each), and writes the result lines in input
order through the same fsync'ed, resumable writer as the single-process run: the output is the
same file, line for line.

Failures: when an actor dies (or a call raises) the records of that call are retried once, each
on its own, on a fresh actor; a record that fails again gets an error line saying so. Nothing is
dropped, and the others of its batch are not blamed for it.

Ray core actors rather than Ray Data: ordered, resumable output and per-record retry need the
driver to hold the bookkeeping; Ray Data is what Data-Juicer's Ray executor uses (see
adapters/data_juicer_op.py).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgdiff_onnx.jsonl import ResultWriter, RunError, RunOptions, check_start, input_batches, run_identity
from imgdiff_onnx.manifest import MANIFEST_NAME
from imgdiff_onnx.manifest import read as read_manifest
from imgdiff_onnx.modelset import resolve_precision
from imgdiff_onnx.params import OperatorParams
from imgdiff_onnx.pipeline import DifferenceAreaGenerator, EngineSettings
from imgdiff_onnx.records import InputLine, OutputLine, error_output, process_lines
from imgdiff_onnx.signals import GracefulStop

log = logging.getLogger(__name__)

# Fault injection for the tests: an actor given a record whose key is listed here kills its own
# process, as a crash would. "key" crashes every time; "key~" only the first time (a marker
# file in IMGDIFF_FAULT_DIR remembers). Unset in normal use.
FAULT_ENV = "IMGDIFF_FAULT_CRASH_KEYS"
FAULT_DIR_ENV = "IMGDIFF_FAULT_DIR"


@dataclass(frozen=True)
class RayOptions:
    """address: None starts a local Ray (num_cpus CPUs, default all); "auto" or "host:port" joins
    a cluster. actors x threads must not exceed the CPUs Ray grants."""

    address: str | None = None
    actors: int = 1
    threads: int = 1
    num_cpus: int | None = None
    calls_in_flight_per_actor: int = 2

    def __post_init__(self) -> None:
        for name in ("actors", "threads", "calls_in_flight_per_actor"):
            if getattr(self, name) < 1:
                raise ValueError(f"ray {name} must be >= 1, got {getattr(self, name)}")


def _maybe_crash(lines: list[InputLine]) -> None:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    keys = {line.pair.key for line in lines if line.pair is not None}
    for entry in spec.split(","):
        once = entry.endswith("~")
        key = entry.rstrip("~")
        if key not in keys:
            continue
        if once:
            marker = Path(os.environ.get(FAULT_DIR_ENV, ".")) / f"crashed-{key}"
            if marker.exists():
                continue
            marker.touch()
        os.kill(os.getpid(), signal.SIGKILL)


class EngineWorker:
    """What each actor holds: one engine; `process` turns input lines into output lines."""

    def __init__(self, models: str, params: dict[str, dict[str, Any]], settings: EngineSettings):
        self.engine = DifferenceAreaGenerator(models, OperatorParams.from_mapping(params), settings)

    def process(self, lines: list[InputLine], timings: bool) -> list[OutputLine]:
        _maybe_crash(lines)
        return process_lines(self.engine, lines, timings)


@dataclass
class _Unit:
    seq: int  # position of its batch in the input
    lines: list[InputLine]
    retry: bool = False


@dataclass
class _Batch:
    expected: int
    outputs: dict[int, OutputLine] = field(default_factory=dict)  # by input line number


def _grant_check(ray: Any, options: RayOptions) -> None:
    cpus = int(ray.cluster_resources().get("CPU", 0))
    if options.actors * options.threads > cpus:
        raise RunError(
            f"{options.actors} actors x {options.threads} threads = {options.actors * options.threads} CPUs, "
            f"but this Ray cluster grants {cpus}; lower --actors or --threads"
        )


def _room_for_one_more(ray: Any, retired: list[bool], threads: int) -> bool:
    """Can the cluster host the live actors plus a replacement for the one that died?"""
    live = retired.count(False)  # the dead actor's slot included: its replacement
    return int(ray.cluster_resources().get("CPU", 0)) >= live * threads


def run_ray(
    models: str | Path,
    params: OperatorParams,
    settings: EngineSettings,
    input_path: Path,
    output_path: Path,
    options: RunOptions,
    ray_options: RayOptions,
) -> dict[str, int]:
    """Like jsonl.run, on a pool of Ray actors; returns counts of ok / error lines written now."""
    try:
        import ray
        from ray.exceptions import RayActorError, RayTaskError
    except ImportError:
        raise RunError("the Ray run needs Ray: pip install 'imgdiff-onnx[ray]'") from None
    models = str(Path(models).resolve())
    if not (Path(models) / MANIFEST_NAME).is_file():  # before any actor tries (and dies) to load it
        raise RunError(f"no {MANIFEST_NAME} in the model folder {models}")
    # resolved once on the driver, so every actor runs the same precision (and a bad one fails here)
    manifest = read_manifest(Path(models))
    precision, _ = resolve_precision(settings.precision, manifest, Path(models))
    settings = dataclasses.replace(settings, threads=ray_options.threads, precision=precision)
    check_start(input_path, options)
    identity = run_identity(input_path, manifest, str(precision), params, settings.jpeg_roundtrip, options)
    with GracefulStop() as stop, ResultWriter(input_path, output_path, options, identity) as writer:
        started_ray = not ray.is_initialized()
        if started_ray:
            ray.init(address=ray_options.address, num_cpus=ray_options.num_cpus if ray_options.address is None else None,
                     include_dashboard=False, log_to_driver=True)  # fmt: skip
            stop.install()  # Ray's core worker replaces the SIGTERM handler
        try:
            _grant_check(ray, ray_options)
            actor_class = ray.remote(num_cpus=ray_options.threads, max_restarts=0)(EngineWorker)
            param_dicts = params.to_dicts()

            def new_actor() -> Any:
                return actor_class.remote(models, param_dicts, settings)

            actors = [new_actor() for _ in range(ray_options.actors)]
            generation = [0] * len(actors)  # bumped when a slot gets a fresh actor
            busy = [0] * len(actors)
            alone = [False] * len(actors)  # running a retry, which gets its actor to itself
            retired = [False] * len(actors)  # its actor died and the cluster has no CPUs left for a new one
            started = [True] * len(actors)  # a replacement gets work only once it runs: after a node
            starting: dict[Any, tuple[int, int]] = {}  # loss it may wait for CPUs that never come back
            queue: deque[_Unit] = deque()
            batches: dict[int, _Batch] = {}
            pending: dict[Any, tuple[_Unit, int, int]] = {}  # call -> (unit, slot, generation)
            reader = iter(input_batches(input_path, writer.done, options.limit, options.pairs_per_batch))
            next_seq = 0
            next_write = 0
            exhausted = False
            in_flight = ray_options.calls_in_flight_per_actor

            def refill() -> None:
                nonlocal next_seq, exhausted
                while not exhausted and len(queue) < len(actors) * in_flight:
                    lines = next(reader, None)
                    if lines is None:
                        exhausted = True
                        return
                    batches[next_seq] = _Batch(expected=len(lines))
                    queue.append(_Unit(next_seq, lines))
                    next_seq += 1

            def dispatch() -> None:
                # A retry runs alone on its actor, so that a record that crashes again cannot take
                # an innocent record down with it.
                for slot in range(len(actors)):
                    while queue and started[slot] and not retired[slot] and not alone[slot] and busy[slot] < in_flight:
                        if queue[0].retry and busy[slot] > 0:
                            break
                        unit = queue.popleft()
                        pending[actors[slot].process.remote(unit.lines, options.timings)] = (unit, slot, generation[slot])
                        busy[slot] += 1
                        alone[slot] = unit.retry

            def flush_ready() -> None:
                nonlocal next_write
                while next_write in batches and len(batches[next_write].outputs) == batches[next_write].expected:
                    done = batches.pop(next_write)
                    writer.write([done.outputs[n] for n in sorted(done.outputs)])
                    next_write += 1

            refill()
            dispatch()
            while pending or (queue and starting):
                if not pending:
                    log.warning("waiting for Ray to start %d replacement actor(s): the cluster has no free CPUs for them yet", len(starting))
                ready, _ = ray.wait(list(pending) + list(starting), num_returns=1)
                if ready[0] in starting:  # a replacement actor is up: give it work
                    slot, gen = starting.pop(ready[0])
                    started[slot] = started[slot] or gen == generation[slot]
                    dispatch()
                    continue
                unit, slot, gen = pending.pop(ready[0])
                current = gen == generation[slot]
                if current:
                    busy[slot] -= 1
                    alone[slot] = False
                try:
                    outputs = ray.get(ready[0])
                except (RayActorError, RayTaskError) as exc:
                    died = isinstance(exc, RayActorError)
                    reason = "its worker died" if died else f"its worker raised {type(exc.cause).__name__ if exc.cause else 'an error'}"
                    if died and current:
                        ray.kill(actors[slot], no_restart=True)
                        generation[slot] += 1
                        busy[slot] = 0  # its other calls fail too and come back here as stale
                        alone[slot] = False
                        if _room_for_one_more(ray, retired, ray_options.threads):
                            log.warning("actor %d died; starting a new one", slot)
                            actors[slot] = new_actor()
                            started[slot] = False
                            starting[actors[slot].__ray_ready__.remote()] = (slot, generation[slot])
                        else:  # a node left the cluster: go on with the actors that still have CPUs
                            log.warning("actor %d died and the cluster has no free CPUs for a new one (a node lost?); going on with %d actor(s)",
                                        slot, retired.count(False) - 1)  # fmt: skip
                            retired[slot] = True
                            if all(retired):
                                raise RunError("every Ray actor died and the cluster has no CPUs left for new ones; "
                                               "the results written so far are kept: restart with --resume")  # fmt: skip
                    if unit.retry:
                        line = unit.lines[0]
                        key = line.pair.key if line.pair is not None else f"line {line.number}"
                        outputs = [error_output(line, f"{key}: {reason} twice while processing this record")]
                    else:
                        log.warning("retrying the %d records of a failed call one by one (%s)", len(unit.lines), reason)
                        queue.extendleft(_Unit(unit.seq, [line], retry=True) for line in reversed(unit.lines))
                        outputs = []
                for line, out in zip(unit.lines, outputs):
                    batches[unit.seq].outputs[line.number] = out
                flush_ready()
                if stop.signum is None:
                    refill()
                elif any(not u.retry for u in queue):
                    # stopping: batches not yet sent are dropped (not read as done: the output stays
                    # a prefix); retries finish the batches already in flight
                    kept = [u for u in queue if u.retry]
                    queue.clear()
                    queue.extend(kept)
                dispatch()
            flush_ready()
            if stop.signum is not None:
                raise writer.interrupted(stop.signum)
            if batches:
                raise RunError(f"internal error: {len(batches)} batches were never completed")  # pragma: no cover
        finally:
            if started_ray:
                ray.shutdown()
    return writer.stats
