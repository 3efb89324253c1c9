"""A separate virtual environment with the real py-data-juicer, for the operator tests.

py-data-juicer 1.6.1 pins its own stack (transformers < 5 for its model code, datasets, ...), so
it gets its own environment instead of sharing ours. It holds: py-data-juicer, Ray (Data-Juicer's
Ray executor), aiohttp (imported by data_juicer.utils.file_utils but not declared), the CPU torch
wheel pinned for this project (Data-Juicer's default executor calls torch.cuda.empty_cache()
after every mapper and would otherwise auto-install a CUDA torch at run time), and this project
(runtime only, editable).

`python tests/dj_env.py` builds it (CI does this before the tests so the install log shows);
the tests build it on first use otherwise. IMGDIFF_DJ_PYTHON points the tests at an existing one.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DJ_VERSION = "1.6.1"
RAY_VERSION = "2.60.0"
TORCH_VERSION = "2.14.1"
VENV = Path(os.environ.get("IMGDIFF_DJ_VENV", Path.home() / ".cache" / "imgdiff_onnx" / f"dj-venv-{DJ_VERSION}"))
REQUIREMENTS = [f"py-data-juicer=={DJ_VERSION}", f"ray[data]=={RAY_VERSION}", "aiohttp", f"torch=={TORCH_VERSION}"]
# What the original operator itself imports lazily (Data-Juicer would pip-install them at run
# time): for benchmarks/data_juicer_peer.py, in an environment of its own. transformers 4.57.1 is
# Data-Juicer's own pin; it needs huggingface-hub < 1, which datasets 5 refuses, hence datasets 4.
PEER_VENV = Path(os.environ.get("IMGDIFF_DJ_PEER_VENV", Path.home() / ".cache" / "imgdiff_onnx" / f"dj-peer-venv-{DJ_VERSION}"))
PEER_REQUIREMENTS = ["transformers==4.57.1", "datasets>=4.7,<5", "huggingface-hub<1.0", "ultralytics==8.4.*", "torchvision==0.29.1", "nltk"]


def _python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _ready(python: Path, peer: bool = False) -> bool:
    if not python.exists():
        return False
    probe = "import data_juicer, ray, torch, imgdiff_onnx; print(imgdiff_onnx.__file__)"
    if peer:
        probe = "import transformers, ultralytics, nltk; " + probe
    proc = subprocess.run([str(python), "-c", probe], capture_output=True, text=True)
    # the editable install must point at this checkout (CI clones elsewhere)
    return proc.returncode == 0 and proc.stdout.strip().startswith(str(ROOT))


def ensure_dj_python(quiet: bool = True, peer: bool = False) -> Path:
    """The python of an environment with Data-Juicer and this project; builds it if needed.
    peer: the environment that can also run the original operator (benchmarks)."""
    if os.environ.get("IMGDIFF_DJ_PYTHON") and not peer:
        return Path(os.environ["IMGDIFF_DJ_PYTHON"])
    venv = PEER_VENV if peer else VENV
    python = _python(venv)
    if _ready(python, peer):
        return python
    from filelock import FileLock

    venv.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(venv.parent / f"{venv.name}.lock")):  # test workers (pytest-xdist) build it once
        if _ready(python, peer):
            return python
        return _build(venv, python, quiet, peer)


def _build(venv: Path, python: Path, quiet: bool, peer: bool) -> Path:
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    q = ["--quiet"] if quiet else []
    subprocess.run([str(python), "-m", "pip", "install", *q, *REQUIREMENTS, *(PEER_REQUIREMENTS if peer else [])], check=True)
    # the runtime with its own dependencies (no extras: no transformers, optimum or ultralytics here)
    subprocess.run([str(python), "-m", "pip", "install", *q, "-e", str(ROOT)], check=True)
    if not _ready(python, peer):
        raise RuntimeError(f"the Data-Juicer environment at {venv} does not import data_juicer, ray, torch and imgdiff_onnx")
    return python


if __name__ == "__main__":
    print(ensure_dj_python(quiet=False))
