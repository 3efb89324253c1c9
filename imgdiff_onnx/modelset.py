"""A model folder (written by the export step): manifest checks and the one session factory."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from . import manifest as mf
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
    The sessions run one after another, each with all of its threads. cpu_mem_arena and
    mem_pattern are onnxruntime's CPU memory arena and memory-pattern planning (both on by default
    in onnxruntime).
    """

    threads: int = 0
    graph_optimization: str = "all"
    cpu_mem_arena: bool = True
    mem_pattern: bool = True

    def __post_init__(self) -> None:
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0, got {self.threads}")
        if self.graph_optimization not in _OPT_LEVELS:
            raise ValueError(f"graph_optimization must be one of {sorted(_OPT_LEVELS)}, got {self.graph_optimization!r}")


def create_session(path: Path, settings: SessionSettings) -> ort.InferenceSession:
    """The only place sessions are built."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = _OPT_LEVELS[settings.graph_optimization]
    options.enable_cpu_mem_arena = settings.cpu_mem_arena
    options.enable_mem_pattern = settings.mem_pattern
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@dataclass(frozen=True)
class GraphInfo:
    path: Path
    batch_invariant: bool  # False: dynamic int8, feed one sample per call


class ModelSet:
    """The exported graphs of one precision, their preprocessing and the tokenizer."""

    def __init__(self, folder: str | os.PathLike, precision: str = "int8", verify_hashes: bool = False):
        if precision not in mf.PRECISIONS:
            raise ValueError(f"precision must be one of {mf.PRECISIONS}, got {precision!r}")
        self.folder = Path(folder)
        self.precision = precision
        self.manifest = mf.read(self.folder)
        if precision not in self.manifest["precisions"]:
            raise mf.ManifestError(f"{self.folder}: exported with {self.manifest['precisions']}, no {precision} graphs")
        graphs = self.manifest["graphs"]
        names = [graphs[g][precision]["file"] for g in mf.GRAPHS] + [self.manifest["tokenizer"]["file"]]
        mf.check_files(self.folder, self.manifest, names, hashes=verify_hashes)
        self.graphs = {
            g: GraphInfo(path=self.folder / graphs[g][precision]["file"], batch_invariant=bool(graphs[g][precision]["batch_invariant"]))
            for g in mf.GRAPHS
        }
        pre = self.manifest["preprocessing"]
        self.clip_norm = ImageNormalization.from_dict(pre["clip"])
        self.blip_norm = ImageNormalization.from_dict(pre["blip"])
        self.letterbox = LetterboxSettings.from_dict(pre["fastsam"])
        self.tokenizer_path = self.folder / self.manifest["tokenizer"]["file"]
        self.tokenizer_max_length = int(self.manifest["tokenizer"].get("max_length", 512))

    @property
    def random_init(self) -> dict | None:
        return self.manifest.get("random_init")

    def session(self, graph: str, settings: SessionSettings) -> ort.InferenceSession:
        return create_session(self.graphs[graph].path, settings)
