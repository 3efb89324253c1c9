"""Long runs: signals stop cleanly and resume, onnxruntime failures stay with their record, model
files are checked against the manifest, errors form one family, the CLI prints one line."""

from __future__ import annotations

import re
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from imgdiff_onnx import ImgDiffError, ModelRunError
from imgdiff_onnx.engine import integrity
from imgdiff_onnx.engine import manifest as mf
from imgdiff_onnx.errors import CaptionDataError, ModelFolderError, ParameterError, RecordErrorBase, RunError
from imgdiff_onnx.engine.pipeline import DifferenceAreaGenerator, EngineSettings, PairFailure, PairInput, PairResult

from .conftest import DATA, DEFAULT_SIGNALS, imgdiff_command
from .cli_helpers import _cli, _read, _run_args


def test_every_package_error_shares_one_base():
    from imgdiff_onnx.engine.captions import CaptionDataMissing
    from imgdiff_onnx.imageio import ImageLoadError
    from imgdiff_onnx.engine.pipeline import PairError
    from imgdiff_onnx.engine.precision import PrecisionError
    from imgdiff_onnx.runs.records import RecordError
    from imgdiff_onnx.runs.runfile import OutputInUse
    from imgdiff_onnx.runs.signals import Interrupted
    from imgdiff_onnx.engine.worddiff import WordDiffTooComplex

    family = {
        RecordErrorBase: (PairError, RecordError, ImageLoadError, WordDiffTooComplex),
        ModelFolderError: (mf.ManifestError,),
        ParameterError: (PrecisionError,),
        CaptionDataError: (CaptionDataMissing,),
        RunError: (OutputInUse, Interrupted),
    }
    for kind, members in family.items():
        assert issubclass(kind, ImgDiffError)
        for cls in members:
            assert issubclass(cls, kind), cls
    assert issubclass(ModelRunError, ImgDiffError)


def _plain_raises(root: Path) -> list[str]:
    """Every `raise` of a built-in exception class in the runtime and the export code whose line
    does not say why it is not a user error (`# internal: ...`)."""
    import ast
    import builtins

    builtin_errors = {name for name, obj in vars(builtins).items() if isinstance(obj, type) and issubclass(obj, BaseException)}
    builtin_errors -= {"SystemExit", "KeyboardInterrupt", "StopIteration", "GeneratorExit", "NotImplementedError"}
    found = []
    for path in sorted([*(root / "imgdiff_onnx").rglob("*.py"), *(root / "export").rglob("*.py")]):
        lines = path.read_text(encoding="utf-8").splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(node, ast.Raise) or node.exc is None:
                continue
            target = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if isinstance(target, ast.Name) and target.id in builtin_errors:
                statement = "\n".join(lines[node.lineno - 1 : node.end_lineno])
                if "# internal:" not in statement:
                    found.append(f"{path.relative_to(root)}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    return found


def test_every_deliberate_error_derives_from_the_package_base():
    """README's rule, enforced: what the runtime and the export raise on purpose is an ImgDiffError
    (a subclass carries structured fields, e.g. ParameterError.name); a built-in exception is raised
    only for the engine's own invariants, each marked `# internal:` with its reason."""
    from .conftest import ROOT

    assert _plain_raises(ROOT) == []
    from imgdiff_onnx.errors import ExportError
    from imgdiff_onnx_export.images import CalibrationImagesError
    from imgdiff_onnx_export.sources import SourceUnavailable
    from imgdiff_onnx_export.verify import ParityError

    assert all(issubclass(cls, ExportError) and issubclass(cls, ImgDiffError) for cls in (CalibrationImagesError, SourceUnavailable, ParityError))


def test_the_raise_scan_finds_a_plain_raise(tmp_path):
    (tmp_path / "imgdiff_onnx").mkdir()
    (tmp_path / "export").mkdir()
    (tmp_path / "imgdiff_onnx" / "m.py").write_text("def f(x):\n    if x:\n        raise ValueError('bad')\n    raise KeyError(x)  # internal: a test\n")
    assert _plain_raises(tmp_path) == ["imgdiff_onnx/m.py:3: raise ValueError('bad')"]


# ---- signals ------------------------------------------------------------------------------


def _start(models: Path, data: Path, out: Path, *extra: str) -> subprocess.Popen:
    args = imgdiff_command(*_run_args(models, data, out, "--pairs-per-batch", "1", *extra))
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_lines(proc: subprocess.Popen, out: Path, n: int) -> None:
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if out.exists() and len(out.read_bytes().splitlines()) >= n:
            return
        time.sleep(0.02)
    raise AssertionError(f"the run ended (exit {proc.poll()}) before writing {n} lines")


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_after_the_batch_in_flight_and_resume_completes_the_file(tiny_models, dataset, tmp_path, signum, code):  # noqa: F811
    full = tmp_path / "full.jsonl"
    _cli(*_run_args(tiny_models, dataset, full, "--pairs-per-batch", "1"))
    out = tmp_path / "stopped.jsonl"
    proc = _start(tiny_models, dataset, out)
    _wait_for_lines(proc, out, 3)
    os.kill(proc.pid, signum)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == code, stderr
    written = out.read_bytes()
    assert written.endswith(b"\n")  # whole lines only
    n = len(written.splitlines())
    assert 3 <= n < 12, "the run should stop early"
    name = signal.Signals(signum).name
    assert f"stopped by {name}: {n} of 12 input lines are in {out}; run the same command with --resume to continue" in stderr
    assert "instead of --overwrite" not in stderr  # this run was not started with --overwrite
    assert "Traceback" not in stderr
    assert full.read_text().startswith(written.decode())
    _cli(*_run_args(tiny_models, dataset, out, "--pairs-per-batch", "1", "--resume"))
    assert out.read_text() == full.read_text()


# The signals go to the main thread itself (pthread_kill): os.kill addresses the process, and the
# kernel may hand the signal to one of the threads numpy and onnxruntime start at import. The
# child starts with Python's usual handlers (DEFAULT_SIGNALS): a suite run in the background of a
# non-interactive shell ignores SIGINT, and so would the child, which then has no KeyboardInterrupt.
SECOND_SIGNAL = """
import signal, sys, threading, time
from imgdiff_onnx.runs.signals import GracefulStop
main = threading.main_thread().ident
with GracefulStop() as stop:
    signal.pthread_kill(main, signal.{name})
    time.sleep(0.2)
    print("first", stop.signum, flush=True)
    try:
        signal.pthread_kill(main, signal.{name})
        time.sleep(5)
    except KeyboardInterrupt:
        print("KeyboardInterrupt", flush=True)
        sys.exit(130)
print("not stopped", flush=True)
"""


@pytest.mark.parametrize("name, code, said", [("SIGTERM", -signal.SIGTERM, ""), ("SIGINT", 130, "KeyboardInterrupt")])
def test_the_first_signal_asks_and_the_second_stops_at_once(name, code, said):
    proc = subprocess.run([sys.executable, "-c", DEFAULT_SIGNALS + SECOND_SIGNAL.format(name=name)], capture_output=True, text=True, timeout=60)
    lines = proc.stdout.split()
    assert lines[:2] == ["first", str(int(getattr(signal, name)))]
    assert proc.returncode == code and " ".join(lines[2:]) == said, proc.stderr


def test_the_second_signal_goes_to_the_handler_that_was_there_before():
    from imgdiff_onnx.runs.signals import GracefulStop

    seen = []
    before = signal.signal(signal.SIGINT, lambda signum, frame: seen.append(signum))
    try:
        custom = signal.getsignal(signal.SIGINT)
        with GracefulStop() as stop:
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
            time.sleep(0.05)
            assert stop.signum == signal.SIGINT and seen == []
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
            time.sleep(0.05)
            assert seen == [signal.SIGINT]  # called by the second signal, at once
            assert signal.getsignal(signal.SIGINT) is custom  # and put back
    finally:
        signal.signal(signal.SIGINT, before)


def test_a_signal_the_process_ignores_stays_ignored():
    from imgdiff_onnx.runs.signals import GracefulStop

    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with GracefulStop() as stop:
            assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) == stop._handle  # the other one is still handled
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
            time.sleep(0.05)
            assert stop.signum is None
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


# ---- onnxruntime failures -----------------------------------------------------------------


class _FailingOn:
    """Wraps a session: raises onnxruntime's own RuntimeException when `bad(feeds)` holds."""

    def __init__(self, session: ort.InferenceSession, bad):
        self._session, self._bad = session, bad
        self.failures = 0

    def run(self, outputs, feeds, run_options=None):
        if self._bad(feeds):
            self.failures += 1
            raise ort.capi.onnxruntime_pybind11_state.RuntimeException("injected: Non-zero status code returned while running MatMul node")
        return self._session.run(outputs, feeds, run_options)

    def run_with_iobinding(self, binding, run_options=None):  # FastSAM's runs into arrays of ours (models.batching.OwnOutputs)
        if self._bad(None):
            self.failures += 1
            raise ort.capi.onnxruntime_pybind11_state.RuntimeException("injected: Non-zero status code returned while running Conv node")
        return self._session.run_with_iobinding(binding, run_options)

    def __getattr__(self, name):
        return getattr(self._session, name)


OPEN = {"pair": {"min_score_1": -1, "min_score_2": -1}, "segment": {"imgsz": 320}, "matching": {"min_score": 0}}


def _engine(tiny_models: Path) -> DifferenceAreaGenerator:
    from imgdiff_onnx.params import OperatorParams

    params = OperatorParams.from_dicts(OPEN["pair"], OPEN["segment"], OPEN["matching"])
    return DifferenceAreaGenerator(tiny_models, params, EngineSettings(precision="fp32", threads=1))


def _pairs() -> list[PairInput]:
    a, b, c = (str(DATA / p) for p in ("pairs/img_pair_1.jpg", "pairs/img_pair_2.jpg", "images/cat.jpg"))
    return [
        PairInput(a, b, objects1=("plane",), objects2=("boat",), key="first"),
        PairInput(c, b, objects1=("poison",), objects2=("boat",), key="poisoned"),
        PairInput(b, a, objects1=("boat",), objects2=("plane",), key="third"),
    ]


def test_an_onnxruntime_failure_on_one_pair_fails_that_pair_only(tiny_models):
    clean = list(_engine(tiny_models).process_many(_pairs(), pairs_per_batch=3))
    assert all(isinstance(r, PairResult) for r in clean)
    engine = _engine(tiny_models)
    poison = engine.blip.tokens("poison")
    fake = _FailingOn(engine.blip._itm, lambda feeds: any(np.array_equal(row, poison) for row in feeds["input_ids"]))
    engine.blip._itm = fake
    got = list(engine.process_many(_pairs(), pairs_per_batch=3))
    assert fake.failures >= 2  # once in the batch, once when the pair was scored alone
    assert isinstance(got[1], PairFailure) and got[1].key == "poisoned"
    assert "onnxruntime failed in the blip_itm graph" in got[1].error and "injected" in got[1].error
    for want, have in ((clean[0], got[0]), (clean[2], got[2])):
        assert isinstance(have, PairResult)
        np.testing.assert_array_equal(want.boxes, have.boxes)
        assert want.counts == have.counts


def test_an_onnxruntime_failure_before_scoring_becomes_the_record_error(tiny_models):
    engine = _engine(tiny_models)
    calls: list[int] = []

    def bad(feeds) -> bool:  # FastSAM runs twice per pair: it fails on the second pair's images
        calls.append(1)
        return len(calls) > 2

    clean = _engine(tiny_models).process(_pairs()[0])
    engine.segmenter._session = _FailingOn(engine.segmenter._session, bad)
    got = list(engine.process_many(_pairs()[:2], pairs_per_batch=2))
    assert isinstance(got[0], PairResult) and got[0].counts == clean.counts and got[0].counts["candidates"] > 0  # the first pair as if alone
    np.testing.assert_array_equal(got[0].boxes, clean.boxes)
    assert isinstance(got[1], PairFailure) and "onnxruntime failed in the fastsam graph" in got[1].error


def test_run_graph_wraps_only_onnxruntime_errors():
    from imgdiff_onnx.engine.models.batching import run_graph

    class Raises:
        def __init__(self, exc):
            self.exc = exc

        def run(self, outputs, feeds, run_options=None):
            raise self.exc

    with pytest.raises(ModelRunError, match=r"clip_vision graph: InvalidArgument: bad rank \(inputs pixel_values \(1, 3\)\)"):
        run_graph(Raises(ort.capi.onnxruntime_pybind11_state.InvalidArgument("bad rank")), "clip_vision", ["x"], {"pixel_values": np.zeros((1, 3))})
    with pytest.raises(ZeroDivisionError):  # a bug of ours stays a bug, not a record error
        run_graph(Raises(ZeroDivisionError()), "clip_vision", ["x"], {"pixel_values": np.zeros((1, 3))})


# ---- model integrity ------------------------------------------------------------------------


def _flip_a_byte(path: Path) -> None:
    with open(path, "r+b") as handle:
        handle.seek(100)
        byte = handle.read(1)
        handle.seek(100)
        handle.write(bytes([byte[0] ^ 0xFF]))


def test_once_hashes_a_file_the_first_time_then_trusts_its_stamp(tiny_models, tmp_path, monkeypatch):
    copy = tmp_path / "models"
    shutil.copytree(tiny_models, copy)
    data = mf.read(copy)
    names = [data.graph("clip_vision", "int8").file, data.graph("fastsam", "fp32").file]
    hashed: list[str] = []
    real = integrity.sha256
    monkeypatch.setattr(integrity, "sha256", lambda p: hashed.append(Path(p).name) or real(p))
    mf.check_files(copy, data, names, "once")
    assert hashed == names and integrity.stamp_path(copy).is_file()
    mf.check_files(copy, data, names, "once")
    assert hashed == names  # second start: nothing hashed
    _flip_a_byte(copy / names[1])  # same size, new mtime
    with pytest.raises(ModelFolderError, match=r"fastsam\.fp32\.onnx: contents differ from manifest\.json \(sha256 mismatch at the same size"):
        mf.check_files(copy, data, names, "once")
    assert hashed == names + [names[1]]  # only the changed file was hashed again
    mf.check_files(copy, data, names, "size")  # sizes alone cannot see it


def test_the_engine_refuses_a_model_file_changed_at_the_same_size(tiny_models, tmp_path):
    copy = tmp_path / "models"
    shutil.copytree(tiny_models, copy)
    _flip_a_byte(copy / "clip_vision.int8.onnx")
    with pytest.raises(ModelFolderError, match="clip_vision.int8.onnx: contents differ"):
        DifferenceAreaGenerator(copy, settings=EngineSettings(precision="int8"))
    (tmp_path / "x.jsonl").write_text("{}\n")
    proc = _cli("run", "--models", str(copy), "--input", str(tmp_path / "x.jsonl"), "--output", str(tmp_path / "o.jsonl"),
                "--precision", "int8", "--quiet", check=False)  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "contents differ" in proc.stderr


def test_the_engine_checks_weights_stored_beside_a_graph(tiny_models, tmp_path):
    copy = tmp_path / "models"
    shutil.copytree(tiny_models, copy, ignore=shutil.ignore_patterns("torch"))
    data_file = mf.read(copy).graph("blip_itm", "int8").data_file
    assert data_file == "blip_itm.int8.onnx.data"
    _flip_a_byte(copy / data_file)
    with pytest.raises(ModelFolderError, match=r"blip_itm\.int8\.onnx\.data: contents differ"):
        DifferenceAreaGenerator(copy, settings=EngineSettings(precision="int8"))
    (copy / data_file).unlink()
    with pytest.raises(ModelFolderError, match=r"blip_itm\.int8\.onnx\.data"):
        DifferenceAreaGenerator(copy, settings=EngineSettings(precision="int8"))


def test_the_debug_flag_shows_the_traceback(tmp_path):
    (tmp_path / "x.jsonl").write_text("{}\n")
    args = ["run", "--models", str(tmp_path / "none"), "--input", str(tmp_path / "x.jsonl"), "--output", str(tmp_path / "o.jsonl")]
    plain = _cli(*args, check=False)
    assert plain.returncode == 2 and plain.stderr.startswith("error: ") and "Traceback" not in plain.stderr
    debug = _cli(*args, "--debug", check=False)
    assert "Traceback" in debug.stderr and "ModelFolderError" in debug.stderr
    env = {**os.environ, "IMGDIFF_ONNX_DEBUG": "1"}
    proc = subprocess.run([sys.executable, "-m", "imgdiff_onnx", *args], capture_output=True, text=True, env=env)
    assert "Traceback" in proc.stderr


def test_version_on_both_command_lines():
    from imgdiff_onnx import __version__

    assert _cli("--version").stdout.strip() == f"imgdiff_onnx {__version__}"
    proc = subprocess.run([sys.executable, "-m", "imgdiff_onnx.export", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and __version__ in proc.stdout


def test_warnings_print_above_the_progress_bar_not_inside_it(monkeypatch):
    import io
    import logging

    from imgdiff_onnx.runs.progress import ProgressBar

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    logger = logging.getLogger("imgdiff_onnx.test_progress")
    handler = logging.StreamHandler(term)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logging.getLogger().addHandler(handler)
    try:
        bar = ProgressBar(4, True)
        bar.update(1)
        logger.warning("p7: image 2: image not found")
        bar.update(3)
        bar.close()
    finally:
        logging.getLogger().removeHandler(handler)
    lines = re.split(r"[\r\n]", term.getvalue())
    assert "WARNING p7: image 2: image not found" in lines  # a line of its own, not glued to the bar
    assert any("4/4" in line for line in lines)


def test_every_parameter_error_names_its_setting():
    """A ParameterError carries the setting's name (its `.name`), so a command line or a notebook
    can point at the setting without reading the message: every raise passes one."""
    import ast

    from .conftest import ROOT

    unnamed = []
    for path in sorted((ROOT / "imgdiff_onnx").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and getattr(node.exc.func, "id", "") == "ParameterError":
                if len(node.exc.args) + len(node.exc.keywords) < 2:
                    unnamed.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert unnamed == []
    assert len([p for p in (ROOT / "imgdiff_onnx").rglob("*.py") if "raise ParameterError(" in p.read_text()]) >= 8  # the check sees them


def test_the_stop_message_names_overwrite_only_to_a_run_started_with_it():
    from imgdiff_onnx.runs.signals import Interrupted

    plain = Interrupted.run(signal.SIGINT, 4, 12, "out.jsonl")
    assert str(plain) == "stopped by SIGINT: 4 of 12 input lines are in out.jsonl; run the same command with --resume to continue"
    assert plain.exit_code == 130
    again = Interrupted.run(signal.SIGTERM, 4, 12, "out.jsonl", overwrite=True)
    assert str(again).endswith("run the same command with --resume instead of --overwrite to continue") and again.exit_code == 143
