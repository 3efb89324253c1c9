"""Shared fixtures: tiny random-init models exported once per test session, test data paths."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
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


def _export_command(out: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "imgdiff_onnx.export", "--out", str(out), "--verify-imgsz", "640", "--quiet", *args]


def run_export(out: Path, *args: str) -> Path:
    proc = subprocess.run(_export_command(out, *args), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"tiny export failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    export_output(out).write_text(proc.stdout + proc.stderr)
    return out


def export_output(out: Path) -> Path:
    """What run_export's (quiet) export printed, kept beside the model folder."""
    return out.parent / f"{out.name}.export-output.txt"


class TinyExport:
    """The tiny model folder of a test run, exported once for all its workers (pytest-xdist), in the
    background from the run's start so that tests without models run meanwhile.

    The first worker to start launches the export (a lock decides which); every worker's
    tiny_models waits for the exit code file the launcher writes when the export has ended."""

    def __init__(self, shared: Path):
        self.home = shared / "tiny-models"
        self.folder = self.home / "tiny"
        self._proc: subprocess.Popen | None = None

    def start(self) -> None:
        from filelock import FileLock

        self.home.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.home / "launch.lock")):
            if (self.home / "launched").exists():
                return
            (self.home / "launched").touch()
            with export_output(self.folder).open("w") as log:
                self._proc = subprocess.Popen(_export_command(self.folder, "--random-init", "tiny"), stdout=log, stderr=subprocess.STDOUT)

    def wait(self) -> Path:
        exit_file = self.home / "exit-code"
        if self._proc is not None and not exit_file.exists():
            written = self.home / "exit-code.partial"
            written.write_text(str(self._proc.wait()))
            written.rename(exit_file)  # whole, as the other workers see it
        deadline = time.time() + 1800
        while not exit_file.exists():  # another worker launched it
            if time.time() > deadline:
                raise RuntimeError(f"the tiny export launched by another worker did not end: {self.home}")
            time.sleep(0.2)
        code = exit_file.read_text()
        if code != "0":
            raise RuntimeError(f"tiny export failed ({code}):\n{export_output(self.folder).read_text()}")
        return self.folder

    def finish(self) -> None:
        """At the end of the worker that launched it: the other workers may still wait for it."""
        if self._proc is not None:
            self.wait()


def run_root(tmp_path_factory) -> Path:
    """A folder shared by every worker of this test run: the base temp folder itself without
    pytest-xdist, its parent (the run's folder) under it."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def _needs_models(item) -> bool:
    return "tiny_models" in item.fixturenames


@pytest.fixture(scope="session", autouse=True)
def _tiny_export(request, tmp_path_factory):
    """Starts the tiny export at the start of a run that has tests needing it."""
    export = TinyExport(run_root(tmp_path_factory))
    if any(_needs_models(item) for item in request.session.items):
        export.start()
    yield export
    export.finish()


@pytest.fixture(scope="session")
def tiny_models(_tiny_export) -> Path:
    """A model folder with tiny random-init CLIP/BLIP/FastSAM, fp32 + int8, exported once per run
    (started here if the run's start did not see that a test needs it)."""
    _tiny_export.start()
    return _tiny_export.wait()


def pytest_collection_modifyitems(session, config, items) -> None:
    """The order the workers take tests in (with --no-loadscope-reorder): files that need no model
    folder first, while the tiny export runs in the background; then the files that one worker runs
    whole (xdist_group), so that none of them starts last and leaves the other worker idle; then
    the rest, test by test. Each file's tests stay together and in their order."""
    needs: dict = {}
    for item in items:
        needs[item.path] = needs.get(item.path, False) or _needs_models(item)
        if _needs_models(item):
            item.add_marker(pytest.mark.models)
    items.sort(key=lambda item: (needs[item.path], item.get_closest_marker("xdist_group") is None))


@pytest.fixture()
def dataset(tmp_path) -> Path:
    """A JSON Lines dataset for command-line runs: relative image paths (resolved against the
    file's folder), extra fields, bad lines; params.json beside it (cli_helpers.PARAMS)."""
    from .cli_helpers import PARAMS

    (tmp_path / "img").mkdir()
    for name in ("pairs/img_pair_1.jpg", "pairs/img_pair_2.jpg", "images/cat.jpg", "images/img3.jpg", "images/lena.jpg"):
        (tmp_path / "img" / Path(name).name).write_bytes((DATA / name).read_bytes())
    (tmp_path / "params.json").write_text(json.dumps(PARAMS))
    good = {"caption1": PAIR_CAPTIONS[0], "caption2": PAIR_CAPTIONS[1], "image_path1": "img/img_pair_1.jpg", "image_path2": "img/img_pair_2.jpg"}
    lines = [
        json.dumps({**good, "id": "a", "source": "kept as is"}),
        "{not json",
        json.dumps({"id": "b", "caption1": "A cat.", "caption2": "A dog.", "image_path1": "img/cat.jpg", "image_path2": "img/missing.jpg"}),
        json.dumps({"id": "c", "image_path1": "img/cat.jpg", "image_path2": "img/img3.jpg", "objects1": ["cat"], "objects2": ["dog"]}),
        json.dumps([1, 2]),
        json.dumps({**good, "id": "d", "image_path2": "img/lena.jpg"}),
    ]
    for i in range(6):  # more work so the kill test lands mid-run
        lines.append(json.dumps({**good, "id": f"e{i}", "image_path1": "img/cat.jpg" if i % 2 else "img/img_pair_1.jpg"}))
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path
