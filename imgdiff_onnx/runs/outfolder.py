"""Output folders of `show`, `validate`, `demo` (and shard runs and `pack`): written only where nothing else would be lost.

A command writes into `--out` when the folder is new or empty, or holds only what that command
writes (an earlier report, validation or demo). Anything else there (a user's photos, their
dataset) makes the command refuse with one line, before any file is written, replaced or removed.
A marker file records which command owns the folder.

Standard library only.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..errors import RunError

MARKER = ".imgdiff-onnx-output"


def claim(folder: Path, kind: str, owns: Callable[[Path], bool]) -> None:
    """Make `folder` this command's (`kind`: "report", "validation", "demo"), or refuse: every
    entry must be one `owns` accepts (or the folder carries this kind's marker)."""
    if folder.exists() and not folder.is_dir():
        raise RunError(f"--out {folder} is a file; give a folder")
    marker = folder / MARKER
    if folder.is_dir():
        if marker.is_file() and marker.read_text(encoding="utf-8", errors="replace").strip() == kind:
            return
        refuse_foreign("--out", folder, [p.name for p in folder.iterdir() if p.name != MARKER and not owns(p)])
    try:
        folder.mkdir(parents=True, exist_ok=True)
        marker.write_text(kind + "\n", encoding="utf-8")
    except OSError as exc:
        raise RunError(f"--out {folder}: cannot write there ({exc.strerror or exc})") from None


def refuse_foreign(option: str, folder: Path, foreign: list[str]) -> None:
    """Refuse an output folder holding files this tool did not write, naming them (up to five)."""
    if foreign:
        foreign = sorted(foreign)
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise RunError(f"{option} {folder} holds files this tool did not write ({shown}); give a new or empty folder, "
                       "so that nothing of yours is replaced")  # fmt: skip


def named(*names: str) -> Callable[[Path], bool]:
    """An `owns` for files and folders with these names."""
    return lambda path: path.name in names
