"""imgdiff_onnx: Img-Diff difference areas on onnxruntime, CPU-only, torch-free.

Public API: DifferenceAreaGenerator (the engine), its inputs and results, and the settings;
imgdiff_onnx.tuning for kept scores, retune and sweep. The engine (and onnxruntime) loads at
the first use of DifferenceAreaGenerator, so reading and reviewing results files needs neither.
"""

from importlib import import_module
from typing import Any

from .engine.captions import CaptionDataMissing, objects_from_captions
from .errors import CaptionDataError, ExportError, ImgDiffError, ModelFolderError, ModelRunError, RecordErrorBase, RunError
from .engine.manifest import ManifestError
from .imageio import ImageBytes
from .pairs import BoxEvidence, PairError, PairFailure, PairInput, PairResult
from .params import OperatorParams, PairSimilarityArgs, ParameterError, SegmentArgs, TextMatchingArgs
from .settings import EngineSettings

__version__ = "0.1.0"

_ENGINE = {"DifferenceAreaGenerator": "engine.pipeline"}  # loads onnxruntime: imported on first use


def __getattr__(name: str) -> Any:
    if name in _ENGINE:
        return getattr(import_module(f".{_ENGINE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")  # internal: Python's protocol for a module __getattr__


__all__ = [
    "BoxEvidence",
    "CaptionDataError",
    "CaptionDataMissing",
    "DifferenceAreaGenerator",
    "EngineSettings",
    "ExportError",
    "ImageBytes",
    "ImgDiffError",
    "ManifestError",
    "ModelFolderError",
    "ModelRunError",
    "OperatorParams",
    "PairError",
    "PairFailure",
    "PairInput",
    "PairResult",
    "PairSimilarityArgs",
    "ParameterError",
    "RecordErrorBase",
    "RunError",
    "SegmentArgs",
    "TextMatchingArgs",
    "objects_from_captions",
    "__version__",
]
