"""The Data-Juicer operator inside the real py-data-juicer (its own environment, see dj_env.py):
default executor (2 processes), Ray executor (actors), the shipped recipe, and bad recipes.
Each run's boxes are compared with the engine's own output on the same records and models."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from imgdiff_onnx import samples
from imgdiff_onnx.params import OperatorParams
from imgdiff_onnx.engine.pipeline import DifferenceAreaGenerator, EngineSettings
from imgdiff_onnx.runs.records import pair_from_record, record_key

from .conftest import DATA, PAIR_CAPTIONS, ROOT, SHARED
from .dj_env import ensure_dj_python

# the suite runs on pytest-xdist workers: this file's tests stay on one worker, where they share
# module fixtures that take seconds to compute
pytestmark = pytest.mark.xdist_group("data_juicer")

OP = "imgdiff_difference_area_generator_onnx_mapper"
OP_FILE = ROOT / "imgdiff_onnx" / "adapters" / "data_juicer_op.py"
RECIPE = ROOT / "imgdiff_onnx" / "recipes" / "img_diff_onnx.yaml"
OPEN_GATES = {
    "image_pair_similarity_filter_args": {"min_score_1": -1.0, "max_score_1": 1.0, "min_score_2": -1.0, "max_score_2": 1.0},
    "image_segment_mapper_args": {"imgsz": 320, "conf": 0.05, "iou": 0.5},
    "image_text_matching_filter_args": {"min_score": 0.0, "max_score": 1.0},
}
MARKER = [[0.0, 0.0, 0.0, 0.0]]


@pytest.fixture(scope="module")
def dj_python() -> Path:
    return ensure_dj_python()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Relative image paths, an existing meta field, a missing image, an empty object list."""
    folder = tmp_path_factory.mktemp("dj") / "ds"
    (folder / "img").mkdir(parents=True)
    for name in ("pairs/img_pair_1.jpg", "pairs/img_pair_2.jpg", "images/cat.jpg", "images/img3.jpg"):
        shutil.copy(DATA / name, folder / "img" / Path(name).name)
    sample = samples.pair(3, 256, 256)
    cv2.imwrite(str(folder / "img" / "gen_1.png"), sample.image1[:, :, ::-1])
    cv2.imwrite(str(folder / "img" / "gen_2.png"), sample.image2[:, :, ::-1])
    real = {"caption1": PAIR_CAPTIONS[0], "caption2": PAIR_CAPTIONS[1], "image_path1": "img/img_pair_1.jpg", "image_path2": "img/img_pair_2.jpg"}
    records = [
        {"id": "real", "text": "t", **real, "__dj__meta__": {"source": "kept"}},
        {"id": "missing", "text": "t", **real, "image_path2": "img/nope.jpg"},
        {"id": "gen", "text": "t", "caption1": sample.caption1, "caption2": sample.caption2, "image_path1": "img/gen_1.png", "image_path2": "img/gen_2.png"},
        {"id": "same", "text": "t", "caption1": "A cat.", "caption2": "A cat.", "image_path1": "img/cat.jpg", "image_path2": "img/img3.jpg"},
        {"id": "cat", "text": "t", "caption1": "A cat on a sofa.", "caption2": "A dog on a sofa.", "image_path1": "img/cat.jpg", "image_path2": "img/img3.jpg"},
    ]
    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def _records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "data.jsonl").read_text().splitlines()]


def _expected(models: Path, folder: Path, params: dict, precision=None) -> dict[str, list]:
    """The engine's own boxes for every record (the marker where the operator writes one)."""
    engine = DifferenceAreaGenerator(models, OperatorParams.from_mapping(params), EngineSettings(precision=precision, threads=1))
    out = {}
    for record in _records(folder):
        try:
            result = engine.process(pair_from_record(record, record_key(record, ""), folder))
        except ValueError:
            out[record["id"]] = MARKER
            continue
        out[record["id"]] = result.boxes.tolist() if len(result.boxes) else MARKER
    return out


def _recipe(path: Path, folder: Path, models: Path, executor: str, op_args: dict, **extra) -> Path:
    recipe = {
        "project_name": "imgdiff-onnx-test",
        "dataset_path": str(folder / "data.jsonl"),
        "export_path": str(path.parent / f"out-{executor}" / "result.jsonl"),
        "keep_stats_in_res_ds": True,
        "custom_operator_paths": [str(OP_FILE)],
        "process": [{OP: {"model_dir": str(models), **op_args}}],
        **extra,
    }
    if executor == "ray":
        recipe.update(executor_type="ray", ray_address="local")
    path.write_text(yaml.safe_dump(recipe))
    return path


def _dj(python: Path, recipe: Path, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "NLTK_DATA": str(SHARED / "nltk_data")}
    cmd = [str(python), "-m", "data_juicer.tools.process_data", "--config", str(recipe)]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"dj-process exit {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return proc


def _read_output(recipe: Path) -> dict[str, dict]:
    export = Path(yaml.safe_load(recipe.read_text())["export_path"])
    files = sorted(export.glob("*.json*")) if export.is_dir() else [export]  # Ray writes a folder of parts
    rows = [json.loads(line) for f in files for line in f.read_text().splitlines() if line.strip()]
    return {row["id"]: row for row in rows}


def _assert_matches(rows: dict[str, dict], expected: dict[str, list], records: list[dict]) -> None:
    assert sorted(rows) == sorted(expected)
    for record in records:
        row = rows[record["id"]]
        for key, value in record.items():  # every column kept, unchanged
            if key != "__dj__meta__":
                assert row[key] == value, (record["id"], key)
        meta = row["__dj__meta__"]
        got = np.asarray(meta["__dj__bbox__"], dtype=np.float64)
        want = np.asarray(expected[record["id"]], dtype=np.float64)
        assert got.shape == want.shape, (record["id"], got.shape, want.shape)
        np.testing.assert_allclose(got, want, atol=1e-3, err_msg=record["id"])
        if record["id"] == "missing":
            assert "nope.jpg" in meta["imgdiff_error"] and "image not found" in meta["imgdiff_error"]
        else:
            assert meta["imgdiff_error"] == ""
    assert rows["real"]["__dj__meta__"]["source"] == "kept"  # other meta fields survive


@pytest.fixture(scope="module")
def expected_open(tiny_models, dataset) -> dict[str, list]:
    expected = _expected(tiny_models, dataset, OPEN_GATES)
    # the test is only meaningful if some records get boxes and some get the marker
    assert len(expected["real"]) > 1 and len(expected["gen"]) >= 1 and expected["same"] == MARKER
    return expected


def test_default_executor_two_processes_matches_engine(dj_python, tiny_models, dataset, expected_open, tmp_path):
    # run from the dataset's folder: relative paths resolve against the working directory
    recipe = _recipe(tmp_path / "recipe.yaml", dataset, tiny_models, "default", {**OPEN_GATES, "threads": 1}, np=2)
    proc = _dj(dj_python, recipe, cwd=dataset)
    assert "num_proc=2" in proc.stderr + proc.stdout  # cpu_required/num_cpus = threads = 1 -> 2 processes
    _assert_matches(_read_output(recipe), expected_open, _records(dataset))


def test_ray_executor_actor_matches_engine(dj_python, tiny_models, dataset, expected_open, tmp_path):
    # num_proc 1: one 1-thread actor, which leaves the second core to Ray Data's read task
    recipe = _recipe(tmp_path / "recipe.yaml", dataset, tiny_models, "ray", {**OPEN_GATES, "threads": 1, "num_proc": 1})
    proc = _dj(dj_python, recipe, cwd=dataset)
    assert "ActorPoolMapOperator[MapBatches(ImgDiffDifferenceAreaGeneratorOnnxMapper)]" in proc.stderr + proc.stdout
    _assert_matches(_read_output(recipe), expected_open, _records(dataset))


def test_ray_executor_image_root_from_another_directory(dj_python, tiny_models, dataset, expected_open, tmp_path):
    args = {**OPEN_GATES, "threads": 1, "num_proc": 1, "image_root": str(dataset)}
    recipe = _recipe(tmp_path / "recipe.yaml", dataset, tiny_models, "ray", args)
    _dj(dj_python, recipe, cwd=tmp_path)
    _assert_matches(_read_output(recipe), expected_open, _records(dataset))


def test_precision_per_model_from_the_recipe(dj_python, tiny_models, dataset, tmp_path):
    # YAML mapping form; FastSAM int8 gives other candidates than the default's fp32 FastSAM
    precision = {"fastsam": "int8", "clip": "fp32", "blip": "int8"}
    recipe = _recipe(tmp_path / "recipe.yaml", dataset, tiny_models, "default", {**OPEN_GATES, "threads": 1, "precision": precision}, np=1)
    _dj(dj_python, recipe, cwd=dataset)
    expected = _expected(tiny_models, dataset, OPEN_GATES, precision)
    assert expected != _expected(tiny_models, dataset, OPEN_GATES)  # the choice matters on these records
    _assert_matches(_read_output(recipe), expected, _records(dataset))


def test_shipped_recipe_runs_with_img_diff_thresholds(dj_python, tiny_models, dataset, tmp_path):
    shipped = yaml.safe_load(RECIPE.read_text())
    op_args = shipped["process"][0][OP]
    assert op_args["image_pair_similarity_filter_args"] == {"min_score_1": 0.9, "max_score_1": 0.99, "min_score_2": 0.0, "max_score_2": 0.85}
    assert op_args["image_text_matching_filter_args"]["min_score"] == 0.4
    params = {k: op_args[k] for k in OPEN_GATES}
    recipe = _recipe(tmp_path / "recipe.yaml", dataset, tiny_models, "default", {**params, "threads": op_args["threads"]})
    _dj(dj_python, recipe, cwd=dataset)
    _assert_matches(_read_output(recipe), _expected(tiny_models, dataset, params), _records(dataset))


@pytest.mark.parametrize(
    ("op_args", "message"),
    [
        ({"image_text_matching_filter_args": {"min_scor": 0.4}}, "unknown key(s) 'min_scor' (did you mean 'min_score'?)"),
        ({"model_dir": "/nonexistent/models"}, "model_dir: /nonexistent/models: the model folder does not exist"),
        ({"threads": 0}, "threads must be an integer >= 1"),
        ({"precision": "fastsam=int4"}, "fastsam must be fp32, int8 or banded"),
    ],
)
def test_bad_recipe_fails_before_processing_with_a_clear_message(dj_python, tiny_models, dataset, tmp_path, op_args, message):
    recipe = _recipe(tmp_path / "recipe.yaml", dataset, tiny_models, "default", op_args)
    proc = _dj(dj_python, recipe, cwd=dataset, check=False)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr


def test_an_unforeseen_failure_in_the_operator_fails_its_record_not_its_batch(dj_python, tiny_models, dataset, expected_open):
    """Inside Data-Juicer's environment: the engine fails unexpectedly (a bug) on one record of a
    batch; that record's error says so, the others get the engine's boxes."""
    script = f"""
import importlib.util, json
spec = importlib.util.spec_from_file_location("imgdiff_op", {str(OP_FILE)!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
op = module.ImgDiffDifferenceAreaGeneratorOnnxMapper(model_dir={str(tiny_models)!r}, image_root={str(dataset)!r}, **json.loads({json.dumps(json.dumps(OPEN_GATES))}))
engine = op.engine
process_many = engine.process_many
def failing(pairs, **kw):
    if any(p.key == "gen" for p in pairs):
        raise ZeroDivisionError("a bug on one record")
    return process_many(pairs, **kw)
engine.process_many = failing
records = [json.loads(line) for line in open({str(dataset / "data.jsonl")!r})]
samples = {{k: [r.get(k) for r in records] for k in ("id", "text", "caption1", "caption2", "image_path1", "image_path2")}}
out = op.process_batched(samples)
print(json.dumps({{i: [m["imgdiff_error"], [list(map(float, b)) for b in m["__dj__bbox__"]]] for i, m in zip(samples["id"], out["__dj__meta__"])}}))
"""
    env = {**os.environ, "NLTK_DATA": str(SHARED / "nltk_data")}
    proc = subprocess.run([str(dj_python), "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["gen"][0] == "gen: unexpected failure (ZeroDivisionError: a bug on one record); please report it with the record"
    assert got["gen"][1] == MARKER
    for key in ("real", "cat", "same"):
        assert got[key][0] == ""
        np.testing.assert_allclose(np.asarray(got[key][1]), np.asarray(expected_open[key]), atol=1e-3, err_msg=key)
    assert "image not found" in got["missing"][0]
