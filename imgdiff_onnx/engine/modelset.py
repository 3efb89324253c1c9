"""A model folder (written by the export step): manifest checks, precision choice and the one session factory."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import onnxruntime as ort

from . import manifest as mf
from .cpu import onnxruntime_uses_amx
from ..errors import ParameterError
from .integrity import ModelCheck
from .models.blip import BlipMatcher
from .models.clip import ClipImageEncoder
from .models.contracts import CONTRACTS
from .models.fastsam import FastSamSegmenter
from .parallel import Workers
from .precision import DEFAULT as DEFAULT_PRECISION
from .precision import BANDED, MODEL_GRAPHS, Precision, PrecisionError, PrecisionLike, resolve_precision  # noqa: F401 - resolve_precision re-exported
from .preprocess import ImageNormalization, LetterboxSettings

log = logging.getLogger(__name__)

_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


@dataclass(frozen=True)
class SessionSettings:
    """onnxruntime CPU session settings, applied to every graph.

    threads: intra-op threads per session (0 = onnxruntime's default, all physical cores).
    A session may be run by several workers at once, each run with up to `threads` threads.
    cpu_mem_arena and mem_pattern are onnxruntime's CPU memory arena and memory-pattern planning
    (both on by default in onnxruntime).
    shrinking_arena: the session's buffers come from one arena that all such sessions of the
    process share, extended by exactly what is asked and handed back at the end of every run
    made with `run_options(settings)` (onnxruntime's arena shrinkage); cpu_mem_arena is then
    ignored. A freed buffer is reused within the run instead of being allocated and faulted in
    again, and the arena holds the run's live buffers, not the allocator heaps' high-water mark.
    """

    threads: int = 0
    graph_optimization: str = "all"
    cpu_mem_arena: bool = True
    mem_pattern: bool = True
    shrinking_arena: bool = False

    def __post_init__(self) -> None:
        if self.threads < 0:
            raise ParameterError(f"threads must be >= 0, got {self.threads}", "threads")
        if self.graph_optimization not in _OPT_LEVELS:
            raise ParameterError(f"graph_optimization must be one of {sorted(_OPT_LEVELS)}, got {self.graph_optimization!r}", "graph_optimization")


_SHRINKING_ARENA_LOCK = threading.Lock()
_shrinking_arena_registered = False


def _register_shrinking_arena() -> None:
    """The process-wide CPU arena of `shrinking_arena` sessions (onnxruntime's environment
    allocator; only sessions that ask for it use it): extended by exactly the requested size
    (kSameAsRequested), so that every region can be given back when it is free."""
    global _shrinking_arena_registered
    with _SHRINKING_ARENA_LOCK:
        if _shrinking_arena_registered:
            return
        memory_info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        # max_mem 0 (no limit), extend strategy 1 (kSameAsRequested), the rest onnxruntime's defaults
        ort.create_and_register_allocator(memory_info, ort.OrtArenaCfg(0, 1, -1, -1))
        _shrinking_arena_registered = True


def run_options(settings: SessionSettings) -> ort.RunOptions | None:
    """The run options a session built with `settings` needs (None: onnxruntime's defaults)."""
    if not settings.shrinking_arena:
        return None
    options = ort.RunOptions()
    options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return options


def create_session(path: Path, settings: SessionSettings) -> ort.InferenceSession:
    """The only place sessions are built."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = _OPT_LEVELS[settings.graph_optimization]
    options.enable_cpu_mem_arena = settings.cpu_mem_arena or settings.shrinking_arena
    options.enable_mem_pattern = settings.mem_pattern
    options.log_severity_level = 3
    if settings.shrinking_arena:
        _register_shrinking_arena()
        options.add_session_config_entry("session.use_env_allocators", "1")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class Fp32Referee:
    """The fp32 CLIP and BLIP of the banded models (imgdiff_onnx.engine.band), each built the first time
    a score falls in the guard band, then kept: a run whose scores never come near a threshold
    never loads them."""

    def __init__(self, clip: Callable[[], ClipImageEncoder] | None, blip: Callable[[], BlipMatcher] | None):
        self._build = {model: build for model, build in (("clip", clip), ("blip", blip)) if build is not None}
        self._built: dict[str, object] = {}
        self._lock = threading.Lock()

    def has(self, model: str) -> bool:
        return model in self._build

    def _get(self, model: str) -> object:
        with self._lock:
            if model not in self._built:
                log.info("loading the fp32 %s graphs for the guard band", model.upper())
                self._built[model] = self._build[model]()
            return self._built[model]

    @property
    def clip(self) -> ClipImageEncoder:
        return self._get("clip")  # type: ignore[return-value]

    @property
    def blip(self) -> BlipMatcher:
        return self._get("blip")  # type: ignore[return-value]

    def loaded(self) -> list[str]:
        return sorted(self._built)


@dataclass(frozen=True)
class Components:
    """The three model components the engine runs; built by ModelSet.components, or given to
    DifferenceAreaGenerator directly (tests, the PyTorch reference engine). `fp32`: the fp32
    models of the banded ones, None when nothing is banded."""

    clip: ClipImageEncoder
    blip: BlipMatcher
    segmenter: FastSamSegmenter
    fp32: Fp32Referee | None = None


@dataclass(frozen=True)
class GraphInfo:
    path: Path
    precision: str
    batch_invariant: bool  # False: dynamic int8, feed one sample per call
    amx_variant: bool = False  # the graph's AMX variant was chosen (manifest.GraphEntry.amx_variant)


class SessionPool:
    """Sessions built once per (file, settings) and shared, e.g. by engines that differ only in
    the precision of one model (`validate`)."""

    def __init__(self) -> None:
        self._sessions: dict[tuple[Path, SessionSettings], ort.InferenceSession] = {}

    def get(self, path: Path, settings: SessionSettings) -> ort.InferenceSession:
        key = (Path(path).resolve(), settings)
        if key not in self._sessions:
            self._sessions[key] = create_session(path, settings)
        return self._sessions[key]


class ModelSet:
    """The exported graphs at the chosen precision of each model, their preprocessing and the tokenizer.

    precision: "banded", "int8", "fp32", a per-model choice ("fastsam=fp32,clip=banded,blip=int8", a mapping
    or a Precision), or None for the folder's recommendation, else the built-in default.
    amx: load a graph's AMX variant where the folder has one (same outputs, faster where
    onnxruntime runs its int8 GEMM on AMX); None (default) = where onnxruntime does.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        precision: PrecisionLike | None = None,
        model_check: ModelCheck = "once",
        pool: SessionPool | None = None,
        amx: bool | None = None,
    ):
        self.folder = Path(folder)
        self.manifest = mf.read(self.folder)
        self.precision, self.precision_origin = resolve_precision(precision, self.manifest, self.folder)
        entries = {g: self.manifest.graph(g, self.precision.for_graph(g)) for g in self.manifest.graphs}  # required + optional present
        self.amx = onnxruntime_uses_amx() if amx is None else amx
        self.fp32_graphs = {g: self.manifest.graph(g, "fp32") for m in self.precision.banded() for g in MODEL_GRAPHS[m]}  # loaded in the band
        files = [f for e in list(entries.values()) + list(self.fp32_graphs.values()) for f in e.files_for(self.amx)]
        mf.check_files(self.folder, self.manifest, files + [self.manifest.tokenizer_file], model_check)
        self.graphs = {
            g: GraphInfo(self.folder / e.file_for(self.amx), self.precision.for_graph(g), e.batch_invariant, self.amx and e.amx_variant is not None)
            for g, e in entries.items()
        }
        pre = self.manifest.preprocessing
        self.clip_norm: ImageNormalization = pre.clip_settings
        self.blip_norm: ImageNormalization = pre.blip_settings
        self.letterbox: LetterboxSettings = pre.fastsam_settings
        self.tokenizer_path = self.folder / self.manifest.tokenizer_file
        self.tokenizer_max_length = self.manifest.tokenizer_max_length
        self._pool = pool

    @property
    def random_init(self) -> dict | None:
        return self.manifest.random_init

    def session(self, graph: str, settings: SessionSettings) -> ort.InferenceSession:
        contract = graph if graph != "fastsam" or "fastsam_proto" in self.graphs else "fastsam (one graph)"
        return self._session_at(self.graphs[graph].path, settings, contract)

    def components(
        self, settings: SessionSettings, crop_batch_size: int, workers: Workers | None = None, segment_settings: SessionSettings | None = None
    ) -> Components:
        """CLIP, BLIP and FastSAM on this folder's graphs and preprocessing; FastSAM's graphs with
        `segment_settings` when given (its prototype head, run tile by tile, without the
        shrinking arena)."""
        g = self.graphs
        fastsam = segment_settings or settings
        # the largest graph first: its load-time copies then come on top of nothing else
        proto = self.session("fastsam_proto", replace(fastsam, shrinking_arena=False)) if "fastsam_proto" in g else None
        segmenter = FastSamSegmenter(self.session("fastsam", fastsam), self.letterbox, proto, run_options(fastsam))
        clip, blip = self.scorers(settings, crop_batch_size, workers)
        banded = self.precision.banded()
        if not banded:
            return Components(clip, blip, segmenter)
        fp32 = {k: (self.folder / e.file, e.batch_invariant) for k, e in self.fp32_graphs.items()}
        referee = Fp32Referee(
            (lambda: self._clip(*fp32["clip_vision"], settings, crop_batch_size, workers)) if "clip" in banded else None,
            (lambda: self._blip(fp32, settings, crop_batch_size, workers)) if "blip" in banded else None,
        )
        return Components(clip, blip, segmenter, referee)

    def scorers(self, settings: SessionSettings, crop_batch_size: int, workers: Workers | None = None) -> tuple[ClipImageEncoder, BlipMatcher]:
        """CLIP and BLIP at this set's precision (int8 for banded models), without FastSAM."""
        g = self.graphs
        clip = self._clip(g["clip_vision"].path, g["clip_vision"].batch_invariant, settings, crop_batch_size, workers)
        blip = self._blip({k: (g[k].path, g[k].batch_invariant) for k in ("blip_vision", "blip_itm")}, settings, crop_batch_size, workers)
        return clip, blip

    def _session_at(self, path: Path, settings: SessionSettings, contract: str) -> ort.InferenceSession:
        """The session of a graph file, checked against its contract (models/contracts.py)."""
        session = self._pool.get(path, settings) if self._pool is not None else create_session(path, settings)
        CONTRACTS[contract].check(session, path)
        return session

    def _clip(self, path: Path, invariant: bool, settings: SessionSettings, crop_batch_size: int, workers: Workers | None) -> ClipImageEncoder:
        return ClipImageEncoder(self._session_at(path, settings, "clip_vision"), self.clip_norm, invariant, crop_batch_size, workers)

    def _blip(self, graphs: dict[str, tuple[Path, bool]], settings: SessionSettings, crop_batch_size: int, workers: Workers | None) -> BlipMatcher:
        (vision, vision_invariant), (itm, itm_invariant) = graphs["blip_vision"], graphs["blip_itm"]
        return BlipMatcher(
            self._session_at(vision, settings, "blip_vision"),
            self._session_at(itm, settings, "blip_itm"),
            self.tokenizer_path,
            self.blip_norm,
            vision_invariant,
            itm_invariant,
            self.tokenizer_max_length,
            crop_batch_size,
            workers,
        )
