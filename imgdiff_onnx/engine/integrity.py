"""Are the model files the ones the manifest describes? Sizes always; sha256 once per file version.

Hashing the default set of full-size graphs (~0.7 GB) takes about a second, on every engine start
and in every Ray actor. `check="once"` hashes a file the first time and records its (size, mtime,
inode, sha256) in a stamp file in the user's cache; later starts trust a file whose size, mtime
and inode are unchanged. Rewriting a file (a copy, a download, an editor, a truncation) changes its
mtime, so it is hashed again. `check="always"` hashes every time; `check="size"` only compares sizes.

Standard library only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Literal

from ..errors import ModelFolderError, ParameterError

log = logging.getLogger(__name__)

ModelCheck = Literal["size", "once", "always"]
MODEL_CHECKS: tuple[str, ...] = ("size", "once", "always")
CACHE_ENV = "IMGDIFF_ONNX_CACHE"


def cache_dir() -> Path:
    """$IMGDIFF_ONNX_CACHE, else $XDG_CACHE_HOME/imgdiff_onnx, else ~/.cache/imgdiff_onnx."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "imgdiff_onnx"


def sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def stamp_path(folder: Path) -> Path:
    key = hashlib.sha256(str(Path(folder).resolve()).encode()).hexdigest()[:24]
    return cache_dir() / "verified" / f"{key}.json"


def _identity(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _read_stamp(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_stamp(path: Path, data: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:  # a read-only home only costs a re-hash next time
        log.debug("cannot write the verification stamp %s: %s", path, exc)


def check_files(folder: Path, files: dict, names: list[str], check: ModelCheck = "once", manifest_name: str = "manifest.json") -> None:
    """Every named file exists with the size (and sha256) that `files` (the manifest's "files") records."""
    if check not in MODEL_CHECKS:
        raise ParameterError(f"model check must be one of {', '.join(MODEL_CHECKS)}, got {check!r}", "model_check")
    folder = Path(folder)
    stamp_file = stamp_path(folder) if check == "once" else None
    stamp = _read_stamp(stamp_file) if stamp_file is not None else {}
    changed = False
    for name in names:
        entry = files.get(name)
        if entry is None:
            raise ModelFolderError(f"{folder}: {name} is not listed in {manifest_name}")
        path = folder / name
        if not path.is_file():
            raise ModelFolderError(f"{folder}: {name} is listed in {manifest_name} but missing")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise ModelFolderError(f"{path}: {size} bytes, {manifest_name} says {entry['bytes']} (file changed or truncated?); "
                                   "export the model folder again or restore the file")  # fmt: skip
        if check == "size":
            continue
        known = stamp.get(name)
        if check == "once" and known == [*_identity(path), entry["sha256"]]:
            continue
        if sha256(path) != entry["sha256"]:
            raise ModelFolderError(f"{path}: contents differ from {manifest_name} (sha256 mismatch at the same size: the file "
                                   "was changed or is corrupt); export the model folder again or restore the file")  # fmt: skip
        if check == "once":
            stamp[name] = [*_identity(path), entry["sha256"]]
            changed = True
    if changed and stamp_file is not None:
        _write_stamp(stamp_file, stamp)
