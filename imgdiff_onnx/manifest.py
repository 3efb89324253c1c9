"""The model folder's manifest: what is in it, how to preprocess for it, how it was verified.

Shared by the export side (writes it) and the runtime (reads and checks it), so the two agree
on one layout. Standard library only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from . import integrity
from .errors import ModelFolderError
from .integrity import ModelCheck

MANIFEST_NAME = "manifest.json"
FORMAT = "imgdiff-onnx-models/1"
GRAPHS = ("clip_vision", "blip_vision", "blip_itm", "fastsam")
PRECISIONS = ("fp32", "int8")
TOKENIZER_FILE = "tokenizer.json"


def graph_file(graph: str, precision: str) -> str:
    return f"{graph}.{precision}.onnx"


ManifestError = ModelFolderError  # the model folder is missing, incomplete, or does not match its manifest


def read(folder: Path) -> dict:
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(
            f"{folder}: no {MANIFEST_NAME}; not a model folder written by `python -m imgdiff_onnx.export` "
            "(or run `python -m imgdiff_onnx demo`, which exports random-init models)"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path}: not valid JSON ({exc})") from None
    if data.get("format") != FORMAT:
        raise ManifestError(f"{path}: format {data.get('format')!r}, this version reads {FORMAT!r}")
    return data


def write(folder: Path, data: dict) -> Path:
    """Write (or replace) the manifest in one step: a reader never sees half a file."""
    path = Path(folder) / MANIFEST_NAME
    tmp = path.with_name(f".{MANIFEST_NAME}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def check_files(folder: Path, data: dict, names: list[str], check: ModelCheck = "once") -> None:
    """Every named file exists with the recorded size and, unless check="size", sha256 (see integrity.py)."""
    integrity.check_files(folder, data.get("files", {}), names, check, MANIFEST_NAME)
