"""The package's errors: one base class, one subclass per kind of problem.

Callers that only want "did imgdiff_onnx refuse something" catch `ImgDiffError`; the command
lines do, and print its message as one line. The kinds:

- `RecordErrorBase`: one record (pair) cannot be processed; a dataset run writes it as that
  record's error line and goes on.
- `ModelFolderError`: the model folder is missing, incomplete or changed.
- `ParameterError`: a setting or operator parameter is invalid.
- `CaptionDataError`: the caption step's data (shipped, or NLTK's files) cannot be read.
- `RunError`: a dataset run cannot start or continue (input, output, lock, resume).
- `ModelRunError`: onnxruntime failed while running a graph; names the graph.
- `ExportError`: the export step cannot build or verify a model folder.

Standard library only, so every module can import it.
"""

from __future__ import annotations


class ImgDiffError(Exception):
    """Base class of every error imgdiff_onnx raises on purpose."""


class RecordErrorBase(ImgDiffError, ValueError):
    """One record cannot be processed; the others can."""


class ModelFolderError(ImgDiffError, RuntimeError):
    """The model folder is missing, incomplete, or does not match its manifest."""


class ParameterError(ImgDiffError, ValueError):
    """An operator parameter or engine setting is invalid; `name` is the setting's name (as in
    the settings dataclass, e.g. "crop_batch_size") when one setting is at fault, so that a
    command line can name its own flag without reading the message."""

    def __init__(self, message: str, name: str | None = None):
        super().__init__(message)
        self.name = name


class CaptionDataError(ImgDiffError, RuntimeError):
    """The caption step's data cannot be read (a damaged package, or missing NLTK files)."""


class RunError(ImgDiffError, RuntimeError):
    """A dataset run cannot start or continue (not a per-record problem)."""


class ExportError(ImgDiffError, RuntimeError):
    """The export step cannot build or verify a model folder (a missing source, graphs that do
    not reproduce PyTorch, an unexpected graph layout)."""


class ModelRunError(ImgDiffError, RuntimeError):
    """onnxruntime failed while running `graph`."""

    def __init__(self, graph: str, detail: str):
        super().__init__(f"onnxruntime failed in the {graph} graph: {detail}")
        self.graph = graph
        self.detail = detail
