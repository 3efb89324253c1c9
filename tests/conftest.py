"""Shared fixtures: tiny random-init models exported once per test session, test data paths."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DATA = SHARED / "data"
PAIR1 = DATA / "pairs" / "img_pair_1.jpg"
PAIR2 = DATA / "pairs" / "img_pair_2.jpg"
PAIR_CAPTIONS = ("A plane in the sky flying alone.", "A boat in the ocean sailing alone.")

# A child that tests send SIGINT/SIGTERM must not inherit them ignored: a test run started in the
# background of a non-interactive shell ignores SIGINT, and so would its children (the engine
# leaves an ignored signal ignored). These lines give the child Python's usual start.
DEFAULT_SIGNALS = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); signal.signal(signal.SIGTERM, signal.SIG_DFL)\n"


def imgdiff_command(*args: str) -> list[str]:
    """`python -m imgdiff_onnx ARGS` with SIGINT and SIGTERM at their usual effect."""
    code = DEFAULT_SIGNALS + "import runpy; runpy.run_module('imgdiff_onnx', run_name='__main__', alter_sys=True)"
    return [sys.executable, "-c", code, *args]

# NLTK itself (the reference the caption step is checked against, and the original operator in the
# Data-Juicer tests) reads its data from here; the product ships its own tables and never reads ../shared.
os.environ.setdefault("NLTK_DATA", str(SHARED / "nltk_data"))
# Model verification stamps go to a folder of this test session, not the user's cache.
os.environ["IMGDIFF_ONNX_CACHE"] = tempfile.mkdtemp(prefix="imgdiff-test-cache-")


def run_export(out: Path, *args: str) -> Path:
    cmd = [sys.executable, "-m", "imgdiff_onnx.export", "--out", str(out), "--verify-imgsz", "640", "--quiet", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"tiny export failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    export_output(out).write_text(proc.stdout + proc.stderr)
    return out


def export_output(out: Path) -> Path:
    """What run_export's (quiet) export printed, kept beside the model folder."""
    return out.parent / f"{out.name}.export-output.txt"


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> Path:
    """A model folder with tiny random-init CLIP/BLIP/FastSAM, fp32 + int8, exported once."""
    return run_export(tmp_path_factory.mktemp("models") / "tiny", "--random-init", "tiny")
