"""Dataset runs from the command line: JSONL in/out, bad lines, SIGKILL + resume, drawing, demo."""

from __future__ import annotations

import json
import shutil
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from imgdiff_onnx.review.drawing import GAP, colour, draw_pair

from .cli_helpers import PARAMS, _cli, _read, _run_args
from .conftest import DATA, PAIR_CAPTIONS

def test_run_writes_one_line_per_input_line_in_order(tiny_models, dataset, tmp_path):
    out = tmp_path / "out.jsonl"
    _cli(*_run_args(tiny_models, dataset, out))
    rows = _read(out)
    assert len(rows) == 12
    assert [r["imgdiff"]["line"] for r in rows] == list(range(1, 13))
    assert rows[0]["source"] == "kept as is" and rows[0]["imgdiff"]["status"] == "ok"
    assert rows[0]["imgdiff"]["objects1"] == ["plane", "sky"]
    assert set(rows[0]["imgdiff"]["counts"]) >= {"candidates", "after_crop_pair_gate", "kept"}
    # the default precision is banded: each pair says how many of its scores were re-scored in fp32
    band = rows[0]["imgdiff"]["band"]
    assert set(band) <= {"pair_similarity", "crop_similarity", "itm_probability"} and band["pair_similarity"]["scored"] == 1
    assert all(0 <= b["rescored"] <= b["scored"] for b in band.values())
    assert all(len(b) == 4 for b in rows[0]["imgdiff"]["boxes"])
    assert rows[1]["imgdiff"]["status"] == "error" and "invalid JSON" in rows[1]["imgdiff"]["error"]
    assert rows[2]["imgdiff"]["status"] == "error" and "missing.jpg" in rows[2]["imgdiff"]["error"] and rows[2]["id"] == "b"
    assert rows[3]["imgdiff"]["status"] == "ok" and rows[3]["imgdiff"]["objects1"] == ["cat"]
    assert rows[4]["imgdiff"]["status"] == "error" and "JSON object" in rows[4]["imgdiff"]["error"]
    # an existing output is not overwritten by accident
    proc = _cli(*_run_args(tiny_models, dataset, out), check=False)
    assert proc.returncode == 2 and "--resume" in proc.stderr


def test_a_bad_line_is_stored_without_its_key_and_logged_with_it(tmp_path):
    from imgdiff_onnx.runs.jsonlines import RawLine
    from imgdiff_onnx.runs.records import parse_line, process_lines

    texts = ["", "{x", json.dumps({"id": "r3", "image_path1": ["a.jpg"], "image_path2": "b.jpg"}), json.dumps({"image_path2": "b.jpg"}),
             json.dumps({"image_path1": 5, "image_path2": None})]  # fmt: skip
    raws = [RawLine(n, t.encode(), len(t.encode())) for n, t in enumerate(texts, 1)]
    out = process_lines(None, [parse_line(raw, tmp_path) for raw in raws], False)  # no pair reaches an engine
    problems = [
        "empty line (expected a JSON object)",
        "invalid JSON (Expecting property name enclosed in double quotes at column 2)",
        "image_path1 must be a string, got list",
        "missing image_path1",
        "missing image_path2; image_path1 must be a string, got int",  # both named
    ]
    # the results file's `error` says what is wrong (its `line` and `id` say where) ...
    assert [json.loads(o.text)["imgdiff"]["error"] for o in out] == problems
    assert [json.loads(o.text)["imgdiff"]["line"] for o in out] == [1, 2, 3, 4, 5]
    # ... and the log line names the record: its id, else its line
    assert [o.error for o in out] == [f"{key}: {problem}" for key, problem in zip(["line 1", "line 2", "r3", "line 4", "line 5"], problems)]


def test_sigkill_then_resume_equals_uninterrupted_run(tiny_models, dataset, tmp_path):
    full = tmp_path / "full.jsonl"
    _cli(*_run_args(tiny_models, dataset, full, "--pairs-per-batch", "1"))
    killed = tmp_path / "killed.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "imgdiff_onnx", *_run_args(tiny_models, dataset, killed, "--pairs-per-batch", "1")])
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if killed.exists() and len(killed.read_bytes().splitlines()) >= 4:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = len(killed.read_bytes().splitlines())
    assert 4 <= partial < 12
    with open(killed, "ab") as handle:  # as if the crash tore the last line
        handle.write(b'{"id": "torn", "imgd')
    _cli(*_run_args(tiny_models, dataset, killed, "--pairs-per-batch", "1", "--resume"))
    assert killed.read_text() == full.read_text()


def test_resume_refuses_a_foreign_file(tiny_models, dataset, tmp_path):
    out = tmp_path / "foreign.jsonl"
    out.write_text('{"something": 1}\n')
    proc = _cli(*_run_args(tiny_models, dataset, out, "--resume"), check=False)
    assert proc.returncode == 2 and "no record of the run that wrote it" in proc.stderr
    assert out.read_text() == '{"something": 1}\n'  # untouched


def test_unknown_parameter_key_is_an_error(tiny_models, dataset, tmp_path):
    (dataset.parent / "params.json").write_text(json.dumps({"image_segment_mapper_args": {"imgsize": 640}}))
    proc = _cli(*_run_args(tiny_models, dataset, tmp_path / "x.jsonl"), check=False)
    assert proc.returncode == 2 and "imgsize" in proc.stderr and "Traceback" not in proc.stderr


def test_boxes_are_drawn_where_the_results_say_in_their_numbered_colour():
    img = np.full((100, 160, 3), 30, np.uint8)
    other = cv2.resize(img, (80, 50))  # other size: drawn in image 1's frame
    boxes = [[80.0, 50.0, 40.0, 20.0], [30.0, 30.0, 20.0, 20.0]]  # box 1: x 60..100, y 40..60
    canvas = draw_pair(img, other, boxes, numbers=False, thickness=2)
    assert canvas.shape == (100, 2 * 160 + GAP, 3)
    for k, (x0, x1, y0, y1) in ((1, (60, 99, 40, 59)), (2, (20, 39, 20, 39))):
        mask = np.all(canvas == np.array(colour(k), np.uint8), axis=2)
        for side in (mask[:, :160], mask[:, 160 + GAP :]):
            ys, xs = np.nonzero(side)
            assert (xs.min(), xs.max(), ys.min(), ys.max()) == (x0, x1, y0, y1)
    assert colour(1) != colour(2)
    numbered = draw_pair(img, other, boxes)
    assert np.all(numbered[41:45, 61:66] == np.array(colour(1), np.uint8), axis=2).any()  # the number's tag


def test_demo_runs_offline_with_existing_models(tiny_models, tmp_path):
    env_free = _cli("demo", "--out", str(tmp_path / "demo"), "--models", str(tiny_models), "--pairs", "2", "--quiet")
    assert "RANDOM weights" in env_free.stdout
    rows = _read(tmp_path / "demo" / "results.jsonl")
    assert [r["id"] for r in rows] == ["pair0", "pair1", "unchanged"] and all(r["imgdiff"]["status"] == "ok" for r in rows)
    assert (tmp_path / "demo" / "report" / "index.html").is_file()
    # the gates at work: the unchanged pair stopped by the image-pair gate, identical crops by the crop-pair gate
    assert [r["imgdiff"]["exit_reason"] for r in rows[:2]] == [None, None]
    assert rows[2]["imgdiff"]["exit_reason"].startswith("pair similarity 1.0000 outside [-1.0, 0.99999]")
    changed = [r["imgdiff"]["counts"] for r in rows[:2]]
    assert all(0 < c["after_crop_pair_gate"] < c["unique_windows"] for c in changed), changed
    assert "the image-pair gate stopped 1 pair(s)" in env_free.stdout and "the crop-pair gate stopped" in env_free.stdout


def _cli_env(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "imgdiff_onnx", *args], capture_output=True, text=True, env={**os.environ, **env})


def test_params_may_be_a_data_juicer_recipe(tiny_models, dataset, tmp_path):
    from .conftest import ROOT

    RECIPE = ROOT / "imgdiff_onnx" / "recipes" / "img_diff_onnx.yaml"

    out = tmp_path / "out.jsonl"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.read_text())
    args = _run_args(tiny_models, dataset, out, "--limit", "1")
    args[args.index("--params") + 1] = str(recipe)
    _cli(*args)
    assert _read(out)[0]["imgdiff"]["status"] == "ok"
    # the recipe's thresholds were used: the whole-pair gate 0.9-0.99 shows in the exit reason or counts
    row = _read(out)[0]["imgdiff"]
    sim = row["pair_similarity"]
    assert (0.9 <= sim <= 0.99) == ("candidates" in row["counts"]), row
    recipe_without_op = tmp_path / "other.yaml"
    recipe_without_op.write_text("process:\n  - some_other_mapper: {}\n")
    args[args.index("--params") + 1] = str(recipe_without_op)
    proc = _cli(*args, check=False)
    assert proc.returncode == 2 and "has no imgdiff_difference_area_generator_onnx_mapper" in proc.stderr


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("p.yaml", "image_segment_mapper_args: [1\n", "not valid YAML"),
        ("p.yaml", "image_text_matching_filter_args:\n  max_score: a: b\n",  # where it is, without a caret that one line cannot hold
         "not valid YAML: mapping values are not allowed here at line 2, column 15: `  max_score: a: b` (column 15 is `:`)"),
        ("p.json", '{"image_segment_mapper_args": ', "not valid JSON"),
        ("p.yaml", "image_segment_mapper_args: 5\n", "image_segment_mapper_args must be a mapping"),
        ("p.yaml", "- 1\n", "expected a mapping"),
    ],
)
def test_bad_params_file_is_one_line(tiny_models, dataset, tmp_path, name, text, message):
    params = tmp_path / name
    params.write_text(text)
    args = _run_args(tiny_models, dataset, tmp_path / "out.jsonl")
    args[args.index("--params") + 1] = str(params)
    proc = _cli(*args, check=False)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert str(params) in proc.stderr and proc.stderr.count("\n") == 1


def test_overwrite_touches_nothing_until_start_up_checks_pass(tiny_models, dataset, tmp_path):
    out = tmp_path / "out.jsonl"
    _cli(*_run_args(tiny_models, dataset, out, "--limit", "1"))  # a results file of ours: --overwrite may replace it
    precious = out.read_text()
    proc = _cli(*_run_args(tmp_path / "no-models", dataset, out, "--overwrite"), check=False)
    assert proc.returncode == 2 and "no manifest.json" in proc.stderr and "Traceback" not in proc.stderr
    assert out.read_text() == precious


def test_input_folder_and_resume_with_overwrite_are_refused(tiny_models, dataset, tmp_path):
    args = _run_args(tiny_models, dataset, tmp_path / "out.jsonl")
    args[args.index("--input") + 1] = str(dataset.parent)
    proc = _cli(*args, check=False)
    assert proc.returncode == 2 and "--input names shards, so --output is a folder (one results file per shard); " in proc.stderr
    proc = _cli(*_run_args(tiny_models, dataset, tmp_path / "out.jsonl", "--resume", "--overwrite"), check=False)
    assert proc.returncode == 2 and "not allowed with argument" in proc.stderr


def test_a_second_writer_is_refused_while_the_first_holds_the_file(tiny_models, dataset, tmp_path):
    from imgdiff_onnx.runs.runfile import OutputLock

    out = tmp_path / "out.jsonl"
    lock = OutputLock(out).acquire()  # as a live run would
    try:
        proc = _cli(*_run_args(tiny_models, dataset, out, "--limit", "2"), check=False)
        assert proc.returncode == 2 and f"{out} is being written by another run (pid {os.getpid()})" in proc.stderr
        assert out.read_bytes() == b""  # as the holder left it (its lock created the file)
    finally:
        lock.release()
    _cli(*_run_args(tiny_models, dataset, out, "--limit", "2"))  # released: the run goes ahead
    assert len(_read(out)) == 2
    assert not (tmp_path / ".out.jsonl.lock").exists()  # a finished run leaves no pid file


def test_concurrent_resume_is_refused_and_the_first_run_finishes_intact(tiny_models, dataset, tmp_path):
    full = tmp_path / "full.jsonl"
    _cli(*_run_args(tiny_models, dataset, full, "--pairs-per-batch", "1"))
    out = tmp_path / "out.jsonl"
    first = subprocess.Popen([sys.executable, "-m", "imgdiff_onnx", *_run_args(tiny_models, dataset, out, "--pairs-per-batch", "1")])
    deadline = time.time() + 300
    while time.time() < deadline and not (out.exists() and out.read_bytes().count(b"\n") >= 1):
        time.sleep(0.05)
    # the first run is paused mid-file (alive, holding the file) while the second tries: without the
    # pause, a first run that finishes before the second has started would make the test pass vacuously
    os.kill(first.pid, signal.SIGSTOP)
    try:
        assert first.poll() is None and out.read_bytes().count(b"\n") < 12, "the first run ended before the second could try"
        second = _cli(*_run_args(tiny_models, dataset, out, "--pairs-per-batch", "1", "--resume"), check=False)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert first.wait(timeout=600) == 0
    assert second.returncode == 2 and "is being written by another run" in second.stderr
    assert out.read_text() == full.read_text()


def test_resume_checks_it_continues_the_same_run(tiny_models, dataset, tmp_path):
    full = tmp_path / "full.jsonl"
    _cli(*_run_args(tiny_models, dataset, full))
    out = tmp_path / "out.jsonl"
    _cli(*_run_args(tiny_models, dataset, out, "--limit", "4"))
    other_params = tmp_path / "other.json"
    other_params.write_text(json.dumps({**PARAMS, "image_text_matching_filter_args": {"min_score": 0.5}}))
    args = _run_args(tiny_models, dataset, out, "--resume")
    args[args.index("--params") + 1] = str(other_params)
    proc = _cli(*args, check=False)
    # refused from the manifest before the models load (no engine log line), each value that differs named, then and now
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "written by a run with other settings: image_text_matching_filter_args.min_score (0.0 before, 0.5 now);" in proc.stderr
    proc = _cli(*_run_args(tiny_models, dataset, out, "--resume", "--precision", "fp32"), check=False)
    assert proc.returncode == 2 and "other settings: precision (" in proc.stderr and " before, fp32 now)" in proc.stderr
    proc = _cli(*_run_args(tiny_models, dataset, out, "--resume", "--timings"), check=False)
    assert proc.returncode == 2 and "other settings: timings (false before, true now)" in proc.stderr
    # the same input file edited under the results: line 3 no longer matches
    original = dataset.read_text()
    lines = original.splitlines()
    lines[2] = lines[2].replace('"id": "b"', '"id": "B"')
    dataset.write_text("\n".join(lines) + "\n")
    proc = _cli(*_run_args(tiny_models, dataset, out, "--resume"), check=False)
    assert proc.returncode == 2 and "line 3 is the result of another input line 3" in proc.stderr
    dataset.write_text(original)
    assert len(_read(out)) == 4  # nothing was touched by the refused resumes
    # settings that do not change results may differ
    args = _run_args(tiny_models, dataset, out, "--resume", "--pairs-per-batch", "3", "--crop-batch-size", "2", "--memory-release", "mmap", "--segment-together")
    args[args.index("--threads") + 1] = "2"
    _cli(*args)
    assert out.read_text() == full.read_text()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--threads", "-3"), "--threads: threads must be an integer >= 0 (0 = automatic), got -3"),  # EngineSettings' check, the one place
        (("--workers", "-1"), "--workers: workers must be an integer >= 0 (0 = automatic), got -1"),
        (("--crop-batch-size", "0"), "--crop-batch-size: crop_batch_size must be an integer >= 1, got 0"),
        (("--pairs-per-batch", "0"), "--pairs-per-batch must be 1 or more, got 0"),
        (("--limit", "0"), "--limit must be 1 or more, got 0"),
    ],
)
def test_bad_numbers_are_one_line(tiny_models, dataset, tmp_path, extra, message):
    args = _run_args(tiny_models, dataset, tmp_path / "out.jsonl")
    if extra[0] == "--threads":
        args[args.index("--threads") + 1] = extra[1]
        extra = ()
    proc = _cli(*args, *extra, check=False)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing-models", "the model folder does not exist"),
        ("empty-models", "no manifest.json; not a model folder"),
        ("missing-input", "input file not found"),  # before the (also missing) model folder
        ("precision-twice", "names clip twice"),  # before the (also missing) input
        ("output-under-a-file", "is a file, so the results file cannot go there"),
    ],
)
def test_a_first_mistake_is_one_line_before_any_model_loads(dataset, tmp_path, case, message):
    models, data, out, extra = tmp_path / "models", dataset, tmp_path / "out.jsonl", []
    if case == "empty-models":
        models.mkdir()
    elif case == "missing-input":
        data = tmp_path / "nope.jsonl"
    elif case == "precision-twice":
        data, extra = tmp_path / "nope.jsonl", ["--precision", "clip=int8,clip=fp32"]
    elif case == "output-under-a-file":
        (tmp_path / "afile").write_text("x")
        out = tmp_path / "afile" / "out.jsonl"
    proc = _cli(*_run_args(models, data, out, *extra), check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr
    assert not out.exists()


def test_a_demo_folder_is_the_demos_to_write_again(tiny_models, tmp_path):
    for _ in range(2):
        _cli("demo", "--out", str(tmp_path / "demo"), "--models", str(tiny_models), "--pairs", "1", "--quiet")
    listed = json.loads((tmp_path / "demo" / ".imgdiff-onnx-output").read_text())
    assert listed["kind"] == "demo" and listed["files"]["report"] is None and "pairs/pair0_1.png" in listed["files"]


def test_a_resume_after_the_guard_bands_margins_changed_is_refused_naming_them(tiny_models, dataset, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(tiny_models, models)
    out = tmp_path / "out.jsonl"
    _cli(*_run_args(models, dataset, out, "--limit", "2"))
    manifest = json.loads((models / "manifest.json").read_text())
    manifest["guard_band"]["crop_similarity"]["margin"] = 0.2  # e.g. widened by hand
    (models / "manifest.json").write_text(json.dumps(manifest))
    proc = _cli(*_run_args(models, dataset, out, "--resume"), check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "other settings: guard_band (" in proc.stderr and '"crop_similarity": 0.2' in proc.stderr and len(out.read_text().splitlines()) == 2
