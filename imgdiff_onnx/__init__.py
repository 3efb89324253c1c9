"""imgdiff_onnx: Img-Diff difference areas on onnxruntime, CPU-only, torch-free.

Public API: DifferenceAreaGenerator (the engine), its inputs and results, and the settings.
"""

from .captions import CaptionDataMissing, objects_from_captions
from .errors import CaptionDataError, ExportError, ImgDiffError, ModelFolderError, ModelRunError, RecordErrorBase, RunError
from .manifest import ManifestError
from .pairs import BoxEvidence
from .params import OperatorParams, PairSimilarityArgs, ParameterError, SegmentArgs, TextMatchingArgs
from .pairs import PairError, PairFailure, PairInput, PairResult
from .pipeline import DifferenceAreaGenerator
from .settings import EngineSettings

__version__ = "0.1.0"

__all__ = [
    "BoxEvidence",
    "CaptionDataError",
    "CaptionDataMissing",
    "DifferenceAreaGenerator",
    "EngineSettings",
    "ExportError",
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
