"""Output folders of `show`, `validate`, `sweep`, `demo` (and shard runs and `pack`): written only where nothing else would be lost.

A command writes into `--out` when the folder is new or empty, or when it holds only what this
command wrote there before, unchanged. What it wrote is listed in the folder's marker
(`.imgdiff-onnx-output`: the command and each file's sha256; a folder another part of this tool
owns whole, such as an exported model folder, is listed without one). Anything else there (a
user's photos or notes, a file of ours the user edited since, a file named like ours but not
written by us) makes the command refuse with one line naming it, before any file is written,
replaced or removed.

Standard library only.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

from ..errors import RunError

MARKER = ".imgdiff-onnx-output"
FORMAT = "imgdiff-onnx-output/1"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _listing(folder: Path, kind: str) -> dict[str, str | None] | None:
    """The files this command wrote into `folder` (relative path -> sha256, None for a folder owned
    whole), or None when the folder carries no marker of this command."""
    try:
        data = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("kind") != kind or not isinstance(data.get("files"), dict):
        return None
    return {str(k): (v if isinstance(v, str) else None) for k, v in data["files"].items()}


def _foreign(folder: Path, listed: dict[str, str | None]) -> list[str]:
    """What in `folder` is not as this command left it: files not listed, or changed since."""
    whole = {name for name, digest in listed.items() if digest is None}
    out = []
    for root, dirs, files in os.walk(folder):
        here = Path(root).relative_to(folder)
        dirs[:] = [d for d in dirs if (here / d).as_posix() not in whole]  # a folder owned whole is not looked into
        for name in files:
            rel = (here / name).as_posix()
            if rel == MARKER:
                continue
            if rel not in listed:
                out.append(rel)
            elif listed[rel] != _sha256(folder / rel):
                out.append(f"{rel} (changed since it was written)")
    return out


def claim(folder: Path, kind: str) -> None:
    """May this command (`kind`: "report", "validation", "sweep", "demo") write into `folder`? It
    may when the folder is new or empty, or holds only what this command wrote there, unchanged;
    else refuse, naming what would be lost. Nothing is written here."""
    if folder.exists() and not folder.is_dir():
        raise RunError(f"--out {folder} is a file; give a folder")
    if not folder.is_dir():
        parent = folder.absolute().parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            raise RunError(f"--out {folder}: {parent} is a file, so the folder cannot go there")
        return
    listed = _listing(folder, kind)
    if listed is None:
        refuse_foreign("--out", folder, [p.name for p in folder.iterdir()])
        return
    refuse_foreign("--out", folder, _foreign(folder, listed))


def prepare(folder: Path, kind: str) -> None:
    """Claim `folder` and create it (before the command writes its files)."""
    claim(folder, kind)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunError(f"--out {folder}: cannot write there ({exc.strerror or exc})") from None


def record(folder: Path, kind: str, files: Iterable[Path], whole: Iterable[Path] = ()) -> None:
    """List what the command wrote into `folder`: `files` with their sha256, `whole` folders
    (owned by another part of this tool, e.g. an exported model folder) without."""
    listed: dict[str, str | None] = {path.relative_to(folder).as_posix(): _sha256(path) for path in files}
    listed |= {path.relative_to(folder).as_posix(): None for path in whole if path.exists()}
    tmp = folder / (MARKER + ".tmp")
    tmp.write_text(json.dumps({"format": FORMAT, "kind": kind, "files": dict(sorted(listed.items()))}, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, folder / MARKER)


def refuse_foreign(option: str, folder: Path, foreign: list[str]) -> None:
    """Refuse an output folder holding files this tool did not write, naming them (up to five)."""
    if foreign:
        foreign = sorted(foreign)
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise RunError(f"{option} {folder} holds files this tool did not write ({shown}); give a new or empty folder, "
                       "so that nothing of yours is replaced")  # fmt: skip
