"""How the engine runs (not what it computes): precision, cores, batching, memory, checks.

Every default of the engine's run settings lives here; the CLIs and adapters only pass values on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from .errors import ParameterError
from .engine.integrity import MODEL_CHECKS, ModelCheck
from .engine.precision import Precision, PrecisionLike

PAIRS_PER_BATCH = 4  # pairs whose crops are scored together: the one default of RunOptions,
# ValidateOptions, DifferenceAreaGenerator.process_many and --pairs-per-batch
MAX_INT_DIGITS = 100  # digits of one integer in an input line or a params file: more is refused, named, before any arithmetic
PAIRS_PER_SHARD = 1000  # records per shard written by `pack` (PackOptions and --pairs-per-shard)

MemoryRelease = Literal["trim", "mmap", "off"]
MEMORY_RELEASE: tuple[str, ...] = ("trim", "mmap", "off")


def available_cores() -> int:
    """CPUs this process may run on (its affinity mask, which containers and taskset narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class EngineSettings:
    """How the engine runs.

    precision: which graphs run: "banded", "int8", "fp32", a per-model choice such as
    "fastsam=fp32,clip=banded,blip=int8" (or a mapping / Precision; see imgdiff_onnx.engine.precision),
    or None (default) for the model folder's recommendation (written by `validate --write`), else
    the built-in default: CLIP and BLIP banded (int8, with fp32 for the scores in the guard band
    of a threshold: imgdiff_onnx.engine.band), FastSAM fp32.
    workers, threads: cores used = workers x threads. `workers` model calls run at once (crop
    chunks of the gates), each with `threads` onnxruntime intra-op threads. Defaults (both 0):
    one worker per core, one thread each, which cost up to 8% less CPU time than one call spread
    over all cores in one measurement and the same in another (see benchmarks/ARCHIVE.md).
    `threads` alone (workers 0) keeps one worker: the process uses exactly `threads` cores, as a
    Ray actor or a Data-Juicer process should. `workers` alone gives each worker cores // workers
    threads.
    Results do not depend on either.
    crop_batch_size: crops per model call where the graph is batch-invariant.
    windows_per_step: crop windows a gate scores at a time. It bounds the memory a gate holds
    (the crops, and BLIP's image embeddings: ~1.8 MB per crop for ViT-B/16 at 384 px), not the
    results; a step ends with the workers waiting for its last call, so very small steps leave
    cores idle.
    jpeg_roundtrip: D2 compatibility, crops go through a JPEG encode (OpenCV, quality 95) and
    PIL decode as in Data-Juicer, for score-exact comparison; default in memory.
    model_check: "once" (default) checks each model file's sha256 against the manifest the first
    time and trusts it while its size and mtime stay the same; "always" hashes at every load;
    "size" compares sizes only (see imgdiff_onnx.engine.integrity).
    segment_together: FastSAM's two images of a pair at once, one per worker. Off (default): one
    after the other, each on all workers x threads cores, which holds one image's activations
    (~300 MB at 1024 px, fp32) instead of two for a few per cent more FastSAM CPU time.
    fastsam_arena: FastSAM's activations come from an onnxruntime arena that is handed back at
    the end of every FastSAM run (SessionSettings.shrinking_arena): buffers are reused within
    the run instead of faulted in again, for less CPU time and a lower peak. On by default. It
    registers onnxruntime's process-wide (environment) CPU arena allocator once per process;
    only sessions created with `session.use_env_allocators` use it.
    warm_up: run BLIP's vision graph once on a blank crop right after loading. onnxruntime plans a
    run's buffers from the first run of each input shape, and that first run holds several times
    the memory of later ones (+150-350 MB for BLIP ViT-B/16 at 384 px, measured, against ~+30-60
    MB); made at load time, it does not come on top of a gate step's crops and embeddings. Costs
    one BLIP crop (~0.3-0.6 s) of start-up.
    memory_arena: onnxruntime's CPU memory arena for the other graphs (keeps freed activation
    buffers for reuse, never handed back); off by default for a lower peak RSS at the same speed.
    memory_pattern: onnxruntime's memory-pattern planning; on, as in onnxruntime.
    memory_release: how freed model buffers go back to the system (glibc's allocator, Linux;
    elsewhere nothing is done). "trim" (default): the allocator's free heap pages are returned
    after loading and after each stage (a pair's FastSAM, each step of a gate), at no measured
    cost. "mmap": in addition, every buffer of 4 MiB or more is mapped on its own and unmapped
    when freed: the lowest peak (~-19% against "trim", measured) for more CPU time (page faults:
    +13% measured, +7% in a process started with glibc's huge pages, see imgdiff_onnx.engine.memory).
    "off": the allocator is left alone. "mmap" changes a process-wide allocator setting.
    Figures: benchmarks/ARCHIVE.md.
    diagnostics: keep every score a gate computed, keyed by candidate window
    (PairResult.diagnostics).
    keep_scores: compute every score with the gates open (FastSAM on every pair with object
    words, CLIP on every crop window, BLIP on every crop with every word) and decide from them, so
    that the thresholds can be changed afterwards without a model call (PairResult.scores;
    `run --keep-scores`, `retune`, `sweep`: imgdiff_onnx.tuning). The results are those of a
    gated run; the cost is that of a run with every gate open.
    band_switch: a banded model whose fp32 re-scores make int8 + fp32 cost more CPU time than
    fp32 alone would (measured from the run's own model calls: imgdiff_onnx.engine.pipeline
    BandPrice) runs fp32 for the rest of the run; the decisions are the same (a banded model
    gives fp32's). Off by default: where the switch comes depends on timings, so the results
    lines' `band` tallies after it would differ from run to run (and between a run and its
    resume), which the default keeps byte-identical. Never with keep_scores.
    """

    precision: PrecisionLike | None = None
    threads: int = 0
    workers: int = 0
    crop_batch_size: int = 16
    windows_per_step: int = 64
    jpeg_roundtrip: bool = False
    model_check: ModelCheck = "once"
    segment_together: bool = False
    fastsam_arena: bool = True
    warm_up: bool = True
    memory_arena: bool = False
    memory_pattern: bool = True
    memory_release: MemoryRelease = "trim"
    diagnostics: bool = False
    keep_scores: bool = False
    band_switch: bool = False

    def __post_init__(self) -> None:
        if self.keep_scores and self.diagnostics:
            raise ParameterError("keep_scores and diagnostics exclude each other: the kept scores hold every score diagnostics would", "keep_scores")
        if self.precision is not None:
            Precision.parse(self.precision)  # fail here, not at load time
        for name in ("threads", "workers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ParameterError(f"{name} must be an integer >= 0 (0 = automatic), got {value!r}", name)
        for name in ("crop_batch_size", "windows_per_step"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ParameterError(f"{name} must be an integer >= 1, got {value!r}", name)
        if self.memory_release not in MEMORY_RELEASE:
            raise ParameterError(f"memory_release must be one of {', '.join(MEMORY_RELEASE)}, got {self.memory_release!r}", "memory_release")
        if self.model_check not in MODEL_CHECKS:
            raise ParameterError(f"model_check must be one of {', '.join(MODEL_CHECKS)}, got {self.model_check!r}", "model_check")

    def parallelism(self, cores: int | None = None) -> tuple[int, int]:
        """(workers, threads per session) after the automatic choices described above."""
        cores = available_cores() if cores is None else cores
        if self.workers == 0 and self.threads == 0:
            return cores, 1
        if self.workers == 0:
            return 1, self.threads
        return self.workers, self.threads or max(1, cores // self.workers)
