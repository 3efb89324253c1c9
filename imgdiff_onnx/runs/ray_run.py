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
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable, Iterator
from typing import Any

from imgdiff_onnx.errors import ParameterError
from imgdiff_onnx.runs.jsonl import ResultWriter, RunError, RunOptions, check_start, input_batches, run_identity
from imgdiff_onnx.engine.modelset import ModelSet
from imgdiff_onnx.params import OperatorParams
from imgdiff_onnx.engine.pipeline import DifferenceAreaGenerator, EngineSettings
from imgdiff_onnx.runs.records import InputLine, OutputLine, error_output, process_lines
from imgdiff_onnx.runs.scores import kept_scores_meta
from imgdiff_onnx.runs.signals import GracefulStop

log = logging.getLogger(__name__)

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
                raise ParameterError(f"ray {name} must be >= 1, got {getattr(self, name)}", name)


class EngineWorker:
    """What each actor holds: one engine; `process` turns input lines into output lines.
    (run_ray takes a subclass too: the tests use one that crashes on chosen records.)"""

    def __init__(self, models: str, params: dict[str, dict[str, Any]], settings: EngineSettings):
        self.engine = DifferenceAreaGenerator(models, OperatorParams.from_mapping(params), settings)

    def process(self, lines: list[InputLine], timings: bool) -> list[OutputLine]:
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


def _init_failure(exc: Exception) -> str:
    """The last line of the error an actor's constructor raised (Ray's message holds its traceback)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.split(":")[0].replace(".", "").isidentifier() and ("Error" in ln.split(":")[0] or "Exception" in ln.split(":")[0])]
    return errors[-1] if errors else (lines[-1] if lines else type(exc).__name__)


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


class _ActorPool:
    """The driver's bookkeeping: actor slots, calls in flight, the queue of record batches, retries
    and the batches waiting to be written in input order.

    A retry runs alone on its actor, so that a record that crashes again cannot take an innocent
    record down with it. A dead actor is replaced while the cluster has CPUs for it; a
    replacement gets work only once it runs (after a node loss it may wait for CPUs that never
    come back), and without CPUs its slot retires.
    """

    def __init__(self, ray: Any, new_actor: Callable[[], Any], reader: Iterator[list[InputLine]], writer: ResultWriter,
                 options: RayOptions, timings: bool):  # fmt: skip
        from ray.exceptions import RayActorError, RayTaskError

        self._actor_error, self._failures = RayActorError, (RayActorError, RayTaskError)
        self._ray, self._new_actor, self._reader, self._writer = ray, new_actor, reader, writer
        self._threads, self._in_flight, self._timings = options.threads, options.calls_in_flight_per_actor, timings
        n = options.actors
        self.actors = [new_actor() for _ in range(n)]
        self.generation = [0] * n  # bumped when a slot gets a fresh actor
        self.busy = [0] * n
        self.alone = [False] * n  # running a retry
        self.retired = [False] * n  # its actor died and the cluster has no CPUs left for a new one
        self.started = [True] * n
        self.starting: dict[Any, tuple[int, int]] = {}  # ready-call of a replacement -> (slot, generation)
        self.queue: deque[_Unit] = deque()
        self.batches: dict[int, _Batch] = {}
        self.pending: dict[Any, tuple[_Unit, int, int]] = {}  # call -> (unit, slot, generation)
        self._next_seq = self._next_write = 0
        self._exhausted = False

    def run(self, stop: GracefulStop) -> None:
        self._refill()
        self._dispatch()
        while self.pending or (self.queue and self.starting):
            if not self.pending:
                log.warning("waiting for Ray to start %d replacement actor(s): the cluster has no free CPUs for them yet", len(self.starting))
            ready = self._ray.wait(list(self.pending) + list(self.starting), num_returns=1)[0][0]
            if ready in self.starting:
                self._actor_started(ready)
            else:
                self._collect(ready)
                if stop.signum is None:
                    self._refill()
                else:
                    self._drop_unsent()
            self._dispatch()
        self._flush_ready()
        if stop.signum is None and self.batches:
            raise RunError(f"internal error: {len(self.batches)} batches were never completed")  # pragma: no cover

    def _refill(self) -> None:
        while not self._exhausted and len(self.queue) < len(self.actors) * self._in_flight:
            lines = next(self._reader, None)
            if lines is None:
                self._exhausted = True
                return
            self.batches[self._next_seq] = _Batch(expected=len(lines))
            self.queue.append(_Unit(self._next_seq, lines))
            self._next_seq += 1

    def _dispatch(self) -> None:
        """Send queued batches to the least busy actor, one at a time, up to the calls in flight
        each may have: every actor gets a first batch before any gets a second (filling one actor's
        calls first left the others idle when a run has few batches). A retry goes to an idle actor."""
        while self.queue:
            retry = self.queue[0].retry
            free = [slot for slot in range(len(self.actors))
                    if self.started[slot] and not self.retired[slot] and not self.alone[slot]
                    and self.busy[slot] < (1 if retry else self._in_flight)]  # fmt: skip
            if not free:
                return
            slot = min(free, key=lambda s: self.busy[s])
            unit = self.queue.popleft()
            self.pending[self.actors[slot].process.remote(unit.lines, self._timings)] = (unit, slot, self.generation[slot])
            self.busy[slot] += 1
            self.alone[slot] = unit.retry

    def _actor_started(self, ready: Any) -> None:
        slot, gen = self.starting.pop(ready)
        self.started[slot] = self.started[slot] or gen == self.generation[slot]

    def _collect(self, ready: Any) -> None:
        unit, slot, gen = self.pending.pop(ready)
        current = gen == self.generation[slot]
        if current:
            self.busy[slot] -= 1
            self.alone[slot] = False
        try:
            outputs = self._ray.get(ready)
        except self._failures as exc:
            outputs = self._failed(unit, slot, current, exc)
        for line, out in zip(unit.lines, outputs):
            self.batches[unit.seq].outputs[line.number] = out
        self._flush_ready()

    def _failed(self, unit: _Unit, slot: int, current: bool, exc: Exception) -> list[OutputLine]:
        """A call failed: replace a dead actor, retry the call's records one by one, or report a
        record whose retry failed too."""
        died = isinstance(exc, self._actor_error)
        if died and getattr(exc, "actor_init_failed", False):
            # the engine cannot load on a worker: every record would fail the same way
            raise RunError(f"a Ray actor could not load the engine, so no record can be processed: {_init_failure(exc)}; "
                           "the results written so far are kept: fix the cause and run again with --resume")  # fmt: skip
        cause = getattr(exc, "cause", None)
        reason = "its worker died" if died else f"its worker raised {type(cause).__name__ if cause else 'an error'}"
        if died and current:
            self._replace(slot)
        if unit.retry:
            return [error_output(unit.lines[0], f"{reason} twice while processing this record")]
        log.warning("retrying the %d records of a failed call one by one (%s)", len(unit.lines), reason)
        self.queue.extendleft(_Unit(unit.seq, [line], retry=True) for line in reversed(unit.lines))
        return []

    def _replace(self, slot: int) -> None:
        self._ray.kill(self.actors[slot], no_restart=True)
        self.generation[slot] += 1
        self.busy[slot] = 0  # its other calls fail too and come back as stale
        self.alone[slot] = False
        if _room_for_one_more(self._ray, self.retired, self._threads):
            log.warning("actor %d died; starting a new one", slot)
            self.actors[slot] = self._new_actor()
            self.started[slot] = False
            self.starting[self.actors[slot].__ray_ready__.remote()] = (slot, self.generation[slot])
            return
        log.warning("actor %d died and the cluster has no free CPUs for a new one (a node lost?); going on with %d actor(s)",
                    slot, self.retired.count(False) - 1)  # fmt: skip
        self.retired[slot] = True
        if all(self.retired):
            raise RunError("every Ray actor died and the cluster has no CPUs left for new ones; the results written so far are kept: restart with --resume")

    def _drop_unsent(self) -> None:
        """Stopping: batches not yet sent are dropped (not read as done: the output stays a
        prefix); retries finish the batches already in flight."""
        kept = [u for u in self.queue if u.retry]
        self.queue.clear()
        self.queue.extend(kept)

    def _flush_ready(self) -> None:
        while self._next_write in self.batches and len(self.batches[self._next_write].outputs) == self.batches[self._next_write].expected:
            done = self.batches.pop(self._next_write)
            self._writer.write([done.outputs[n] for n in sorted(done.outputs)])
            self._next_write += 1


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
    except ImportError:
        raise RunError("the Ray run needs Ray: pip install 'imgdiff-onnx[ray]'") from None
    models = str(Path(models).resolve())
    check_start(input_path, output_path, options)
    # the folder is checked on the driver as the single process checks it (manifest, precision,
    # file sizes and hashes) before any actor tries (and dies) to load it, so every actor runs the
    # same precision and a bad folder fails here, with no result line written
    model_set = ModelSet(models, settings.precision, settings.model_check)
    manifest, precision = model_set.manifest, model_set.precision
    settings = dataclasses.replace(settings, threads=ray_options.threads, precision=precision)
    identity = run_identity(input_path, manifest, str(precision), params, settings.jpeg_roundtrip, options, settings.keep_scores)
    meta = kept_scores_meta(model_set, params, settings.jpeg_roundtrip) if settings.keep_scores else None  # the actors' sheets are written here
    with GracefulStop() as stop, ResultWriter(input_path, output_path, options, identity, meta) as writer:
        started_ray = not ray.is_initialized()
        if started_ray:
            # "local": a new local Ray even where one already runs on this machine (a bare ray.init()
            # would join that one, and then refuse num_cpus)
            local = ray_options.address is None
            ray.init(address="local" if local else ray_options.address, num_cpus=ray_options.num_cpus if local else None,
                     include_dashboard=False, log_to_driver=True)  # fmt: skip
            stop.install()  # Ray's core worker replaces the SIGTERM handler
        try:
            _grant_check(ray, ray_options)
            actor_class = ray.remote(num_cpus=ray_options.threads, max_restarts=0)(EngineWorker)
            param_dicts = params.to_dicts()
            reader = iter(input_batches(input_path, writer.done, options.limit, options.pairs_per_batch))
            pool = _ActorPool(ray, lambda: actor_class.remote(models, param_dicts, settings), reader, writer, ray_options, options.timings)
            pool.run(stop)
            if stop.signum is not None:
                raise writer.interrupted(stop.signum)
        finally:
            if started_ray:
                ray.shutdown()
    return writer.stats
