"""Where the PyTorch models come from: hub ids, local folders, the HF cache, Ultralytics .pt files.

Offline machines are the norm for this project. Every loader turns "not reachable" into one
clear message that names what is missing and how to provide it, instead of a network trace.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from imgdiff_onnx.errors import ExportError


class SourceUnavailable(ExportError):
    """A model source could not be found locally and could not be downloaded."""


@dataclass(frozen=True)
class ResolvedSource:
    """A model source as given on the command line, and the local files it resolved to."""

    given: str
    local_path: Path
    revision: str | None  # HF snapshot commit when loaded from the cache, else None


def _hf_cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def resolve_hf(source: str, what: str, flag: str) -> ResolvedSource:
    """A local folder as is; a hub id through the HF cache (downloading only when online)."""
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise SourceUnavailable(f"{what}: folder {path} has no config.json; it is not a saved Hugging Face model")
        return ResolvedSource(given=source, local_path=path.resolve(), revision=None)
    if path.suffix or source.startswith((".", "/", "~")):
        raise SourceUnavailable(f"{what}: no such folder {path}")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        folder = snapshot_download(
            repo_id=source,
            allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"],
            local_files_only=os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"),
        )
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as exc:
        raise SourceUnavailable(
            f"{what}: '{source}' is not a local folder, is not in the Hugging Face cache ({_hf_cache_dir()}), "
            f"and could not be downloaded ({type(exc).__name__}). On a connected machine run "
            f"`hf download {source}` (huggingface_hub's command) and copy the cache (or set HF_HOME), pass a local folder "
            f"with {flag} PATH, or build stand-in weights with --random-init full|tiny."
        ) from None
    revision = Path(folder).name
    return ResolvedSource(given=source, local_path=Path(folder), revision=revision)


def resolve_ultralytics(source: str) -> ResolvedSource:
    """An Ultralytics checkpoint on disk: the path itself, or the name in Ultralytics' weights folder.

    Ultralytics would try to download a missing FastSAM-x.pt from its release page; here that
    is never attempted (it cannot work offline), the user gets a clear message instead.
    """
    path = Path(source).expanduser()
    candidates = [path]
    if not path.is_absolute() and len(path.parts) == 1:
        try:
            from ultralytics.utils import SETTINGS

            candidates.append(Path(SETTINGS["weights_dir"]) / path.name)
        except Exception:  # pragma: no cover - settings unreadable
            pass
    for candidate in candidates:
        if candidate.is_file():
            return ResolvedSource(given=source, local_path=candidate.resolve(), revision=None)
    looked = ", ".join(str(c) for c in candidates)
    raise SourceUnavailable(
        f"FastSAM: checkpoint '{source}' not found (looked in: {looked}). Download it on a connected machine "
        f"(the Ultralytics assets release, e.g. FastSAM-x.pt or FastSAM-s.pt), copy it here and pass "
        f"--fastsam PATH, or build stand-in weights with --random-init full|tiny."
    )
