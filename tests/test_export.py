"""The export command: manifest, hashes, parity figures, re-export, offline errors, --help."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from imgdiff_onnx.engine import integrity
from imgdiff_onnx.engine import manifest as mf
from imgdiff_onnx_export.sources import SourceUnavailable, resolve_hf, resolve_ultralytics

from .conftest import export_output, run_export


def _manifest(folder):
    return json.loads((folder / "manifest.json").read_text())


def test_manifest_lists_every_graph_with_interface_and_hash(tiny_models):
    data = _manifest(tiny_models)
    assert data["format"] == mf.FORMAT
    assert data["precisions"] == ["fp32", "int8"]
    for graph in mf.GRAPHS + mf.OPTIONAL_GRAPHS:
        for precision in ("fp32", "int8"):
            entry = data["graphs"][graph][precision]
            assert entry["file"] == f"{graph}.{precision}.onnx"
            assert entry["inputs"] and entry["outputs"]
            listed = data["files"][entry["file"]]
            assert listed["sha256"] == integrity.sha256(tiny_models / entry["file"])
    assert [i["name"] for i in data["graphs"]["blip_itm"]["fp32"]["inputs"]] == ["input_ids", "attention_mask", "image_embeds"]
    assert data["graphs"]["fastsam"]["fp32"]["inputs"][0]["shape"] == ["batch", 3, "height", "width"]
    assert data["graphs"]["clip_vision"]["int8"]["batch_invariant"] is True  # static QDQ
    assert data["graphs"]["clip_vision"]["int8"]["quantization"]["format"] == "QDQ"
    assert data["graphs"]["blip_vision"]["int8"]["batch_invariant"] is False  # dynamic
    assert data["graphs"]["fastsam"]["int8"]["batch_invariant"] is True
    assert data["graphs"]["fastsam"]["int8"]["quantization"]["format"] == "QDQ"
    # FastSAM split in two: the prototype head runs on demand, tile by tile (masks.py)
    assert [o["name"] for o in data["graphs"]["fastsam"]["fp32"]["outputs"]] == ["predictions", "proto_features"]
    proto = data["graphs"]["fastsam_proto"]["int8"]
    assert [i["name"] for i in proto["inputs"]] == ["proto_features"] and [o["name"] for o in proto["outputs"]] == ["protos"]
    assert proto["batch_invariant"] is True and proto["quantization"]["format"] == "QDQ"
    # BLIP ITM's weights beside the graph (onnxruntime maps them: the word-embedding table stays on disk), hashed
    for precision in ("fp32", "int8"):
        entry = data["graphs"]["blip_itm"][precision]
        assert entry["data_file"] == f"blip_itm.{precision}.onnx.data"
        assert data["files"][entry["data_file"]]["sha256"] == integrity.sha256(tiny_models / entry["data_file"])
        graph = onnx.load(str(tiny_models / entry["file"]), load_external_data=False)
        inline = [t.name for t in graph.graph.initializer if t.data_location != onnx.TensorProto.EXTERNAL and len(t.raw_data) > 1024]
        assert not inline, inline
        assert (tiny_models / entry["data_file"]).stat().st_size > (tiny_models / entry["file"]).stat().st_size
        assert (tiny_models / entry["data_file"]).stat().st_mode & 0o777 == (tiny_models / entry["file"]).stat().st_mode & 0o777
    assert all("data_file" not in data["graphs"][g][p] for g in ("clip_vision", "blip_vision", "fastsam") for p in ("fp32", "int8"))
    # checkpoints saved next to the graphs, hashed too
    assert "torch/fastsam.pt" in data["files"] and "torch/clip/model.safetensors" in data["files"]
    assert data["random_init"]["size"] == "tiny"
    for key in ("torch", "transformers", "ultralytics", "onnxruntime", "onnx"):
        assert data["versions"][key]


def test_preprocessing_constants_travel_with_the_model(tiny_models):
    pre = _manifest(tiny_models)["preprocessing"]
    assert pre["clip"]["resize_shortest_edge"] == 224 and pre["clip"]["crop_height"] == 224
    assert pre["clip"]["resample"] == "bicubic"
    assert pre["blip"]["resize_height"] == 384 and pre["blip"]["crop_height"] is None
    assert pre["clip"]["mean"] == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    assert pre["fastsam"] == {"stride": 32, "pad_value": 114, "interpolation": "linear", "rect": True, "source": "ultralytics LetterBox"}


def test_manifest_reads_into_typed_fields_and_writes_back_the_same_json(tiny_models, tmp_path):
    raw = _manifest(tiny_models)
    manifest = mf.read(tiny_models)
    assert manifest.to_json() == raw  # nothing lost, nothing added
    assert manifest.graph("blip_itm", "int8").batch_invariant is False and manifest.graph("fastsam", "fp32").file == "fastsam.fp32.onnx"
    assert manifest.preprocessing.blip_settings.resize_height == 384 and manifest.preprocessing.fastsam_settings.stride == 32
    assert manifest.tokenizer_file == "tokenizer.json" and manifest.files["tokenizer.json"].bytes > 0
    mf.write(tmp_path, manifest)
    assert json.loads((tmp_path / "manifest.json").read_text()) == raw


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["graphs"]["fastsam"].pop("int8"), r"graphs\.fastsam: no 'int8'"),
        (lambda d: d["graphs"]["clip_vision"]["fp32"].update(batch_invariant="yes"), r"clip_vision\.fp32\.batch_invariant: expected bool"),
        (lambda d: d["preprocessing"]["clip"].pop("mean"), r"preprocessing\.clip: not readable"),
        (lambda d: d.update(precisions=["fp16"]), r"unknown \['fp16'\]"),
        (lambda d: d.pop("files"), r"no 'files'"),
        (lambda d: d.update(format="other/9"), r"format 'other/9'"),
    ],
)
def test_a_broken_manifest_names_the_field(tiny_models, edit, message):
    data = _manifest(tiny_models)
    edit(data)
    with pytest.raises(mf.ManifestError, match=message):
        mf.Manifest.from_json(data)


def test_fp32_parity_figures_within_tolerance(tiny_models):
    v = _manifest(tiny_models)["verification"]
    tol = v["tolerances"]
    assert v["clip_vision"]["fp32_vs_torch"]["min_cosine"] >= tol["min_cosine"]
    assert v["blip_vision"]["fp32_vs_torch"]["min_cosine"] >= tol["min_cosine"]
    assert v["blip_itm"]["fp32_vs_torch"]["max_prob_diff"] <= tol["max_itm_prob_diff"]
    assert v["fastsam"]["fp32_vs_torch"]["min_box_f1"] >= tol["min_box_f1"]
    assert sum(v["fastsam"]["boxes_per_image_torch"]) > 0  # the random head does produce boxes
    for graph in ("clip_vision", "blip_vision"):
        assert "int8_vs_fp32" in v[graph]


def test_files_are_checked_against_the_manifest(tiny_models, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_models, copy)
    data = mf.read(copy)
    names = [data.graph("clip_vision", "fp32").file]
    mf.check_files(copy, data, names, "always")
    with open(copy / names[0], "r+b") as handle:  # same size, different bytes
        handle.seek(100)
        byte = handle.read(1)
        handle.seek(100)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(mf.ManifestError, match="sha256"):
        mf.check_files(copy, data, names, "always")


def test_reexport_from_saved_checkpoints_gives_the_same_graph_outputs(tiny_models, tmp_path):
    out = run_export(
        tmp_path / "again",
        "--clip", str(tiny_models / "torch" / "clip"),
        "--blip", str(tiny_models / "torch" / "blip"),
        "--fastsam", str(tiny_models / "torch" / "fastsam.pt"),
        "--precision", "fp32",
    )
    rng = np.random.default_rng(0)
    feeds = {
        "clip_vision": {"pixel_values": rng.normal(size=(2, 3, 224, 224)).astype(np.float32)},
        "blip_vision": {"pixel_values": rng.normal(size=(1, 3, 384, 384)).astype(np.float32)},
        "fastsam": {"images": rng.uniform(size=(1, 3, 320, 256)).astype(np.float32)},
    }
    for graph, feed in feeds.items():
        a = ort.InferenceSession(str(tiny_models / f"{graph}.fp32.onnx")).run(None, feed)
        b = ort.InferenceSession(str(out / f"{graph}.fp32.onnx")).run(None, feed)
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
    assert _manifest(out)["random_init"] is None
    assert _manifest(out)["sources"]["clip"]["local_path"] == str((tiny_models / "torch" / "clip").resolve())


def test_offline_hub_id_gives_one_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_hf_home"))
    env = dict(os.environ)
    proc = subprocess.run(
        [sys.executable, "-m", "imgdiff_onnx.export", "--out", str(tmp_path / "m"), "--clip", "openai/clip-vit-base-patch32"],
        capture_output=True, text=True, env=env,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "openai/clip-vit-base-patch32" in proc.stderr and "`hf download openai/clip-vit-base-patch32`" in proc.stderr
    assert "--random-init" in proc.stderr


def test_missing_sources_are_named():
    with pytest.raises(SourceUnavailable, match="no such folder"):
        resolve_hf("./does/not/exist", "CLIP", "--clip")
    with pytest.raises(SourceUnavailable, match="FastSAM-s.pt.*not found"):
        resolve_ultralytics("/nonexistent/FastSAM-s.pt")


def test_help_lists_the_options():
    proc = subprocess.run([sys.executable, "-m", "imgdiff_onnx.export", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for flag in ("--out", "--clip", "--blip", "--fastsam", "--precision", "--random-init", "--seed", "--calibration-images", "--quiet"):
        assert flag in proc.stdout


def test_int8_graphs_marked_batch_invariant_are(tiny_models):
    """A graph the manifest calls batch-invariant gives each sample the same output in any batch."""

    data = _manifest(tiny_models)
    rng = np.random.default_rng(1)
    checked = 0
    for graph, shape in (("clip_vision", (4, 3, 224, 224)), ("blip_vision", (3, 3, 384, 384))):
        entry = data["graphs"][graph]["int8"]
        session = ort.InferenceSession(str(tiny_models / entry["file"]), providers=["CPUExecutionProvider"])
        x = rng.normal(size=shape).astype(np.float32)
        together = session.run(None, {"pixel_values": x})[0]
        alone = np.concatenate([session.run(None, {"pixel_values": x[i : i + 1]})[0] for i in range(len(x))])
        assert np.array_equal(together, alone) == entry["batch_invariant"], graph
        checked += 1
    assert checked == 2


def test_a_folder_with_fastsam_in_one_graph_still_runs_with_the_same_boxes(tiny_models, tmp_path):
    """Folders exported before FastSAM was split (one `fastsam` graph with predictions and
    prototypes, no `fastsam_proto`) load and find the same boxes as the split folder."""
    import shutil

    from imgdiff_onnx import DifferenceAreaGenerator, EngineSettings, OperatorParams, PairInput
    from imgdiff_onnx_export.fastsam import join_prototype_head

    from .conftest import DATA

    old = tmp_path / "one-graph"
    shutil.copytree(tiny_models, old, ignore=shutil.ignore_patterns("torch"))
    raw = _manifest(old)
    for precision in ("fp32", "int8"):
        main, proto = old / f"fastsam.{precision}.onnx", old / f"fastsam_proto.{precision}.onnx"
        join_prototype_head(main, proto, main)
        proto.unlink()
        raw["files"].pop(proto.name)
        raw["files"][main.name] = {"bytes": main.stat().st_size, "sha256": integrity.sha256(main)}
    del raw["graphs"]["fastsam_proto"]
    raw["files"] = {k: v for k, v in raw["files"].items() if not k.startswith("torch/")}
    (old / "manifest.json").write_text(json.dumps(raw))
    params = OperatorParams.from_dicts({"min_score_1": -1, "min_score_2": -1, "max_score_2": 1}, {"imgsz": 640}, {"min_score": 0, "max_score": 1})
    pair = PairInput(DATA / "pairs/img_pair_1.jpg", DATA / "pairs/img_pair_2.jpg", "a plane in the sky", "a boat on the ocean")
    for precision in ("fp32", "int8"):
        split = DifferenceAreaGenerator(tiny_models, params, EngineSettings(precision=precision))
        whole = DifferenceAreaGenerator(old, params, EngineSettings(precision=precision))
        assert "fastsam_proto" in split.models.graphs and "fastsam_proto" not in whole.models.graphs
        a, b = split.process(pair), whole.process(pair)
        assert a.exit_reason is None and len(a.candidate_boxes) > 0
        np.testing.assert_array_equal(a.candidate_boxes, b.candidate_boxes)
        np.testing.assert_array_equal(a.boxes, b.boxes)


@pytest.mark.parametrize("reproduces", [True, False])
def test_fastsam_is_split_only_where_the_halves_reproduce_the_whole_graph(tiny_models, tmp_path, monkeypatch, reproduces):
    import shutil

    import cv2

    from imgdiff_onnx_export import fastsam, steps
    from imgdiff_onnx_export.fastsam import join_prototype_head

    from .conftest import DATA

    paths = {"fastsam": {}}
    for precision in ("fp32", "int8"):
        whole = tmp_path / f"fastsam.{precision}.onnx"
        join_prototype_head(tiny_models / whole.name, tiny_models / f"fastsam_proto.{precision}.onnx", whole)
        paths["fastsam"][precision] = whole
    before = {p: integrity.sha256(path) for p, path in paths["fastsam"].items()}
    if not reproduces:
        real = fastsam.same_outputs
        monkeypatch.setattr(fastsam, "same_outputs", lambda path, *a: real(path, *a) and "int8" not in path.name)
    interfaces = {"fastsam": {}}
    images = [cv2.imread(str(DATA / "images/cat.jpg"))[:, :, ::-1]]
    steps.split_fastsam(paths, interfaces, mf.read(tiny_models).preprocessing, images, 320)
    left = sorted(p.name for p in tmp_path.iterdir())
    if reproduces:
        assert left == ["fastsam.fp32.onnx", "fastsam.int8.onnx", "fastsam_proto.fp32.onnx", "fastsam_proto.int8.onnx"]
        assert set(paths["fastsam_proto"]) == {"fp32", "int8"}
        assert [o["name"] for o in interfaces["fastsam"]["outputs"]] == ["predictions", "proto_features"]
    else:  # all precisions or none: FastSAM stays one graph, untouched
        assert left == ["fastsam.fp32.onnx", "fastsam.int8.onnx"] and "fastsam_proto" not in paths
        assert {p: integrity.sha256(path) for p, path in paths["fastsam"].items()} == before
        assert interfaces == {"fastsam": {}}
    shutil.rmtree(tmp_path)


def test_force_replaces_every_model_file_and_keeps_the_rest(tmp_path):
    from imgdiff_onnx.errors import ExportError
    from imgdiff_onnx_export.cli import _prepare_out

    names = [mf.MANIFEST_NAME, "fastsam.int8.onnx", mf.amx_graph_file("fastsam", "int8"), "fastsam_proto.fp32.onnx", "blip_itm.int8.onnx.data", "notes.txt"]
    for name in names:
        (tmp_path / name).write_text("x")
    with pytest.raises(ExportError, match="pass --force"):
        _prepare_out(tmp_path, force=False)
    _prepare_out(tmp_path, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # a stale AMX variant or weights file would otherwise be hashed into the new manifest


def test_quantizing_drops_onnxruntimes_preprocessing_advice_and_nothing_else(tmp_path, caplog):
    import logging

    from onnx import TensorProto, helper, numpy_helper

    from imgdiff_onnx_export.quantize import _without_preprocessing_advice, quantize_transformer

    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [weight],
    )  # fmt: skip
    src = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), src)
    with caplog.at_level(logging.INFO):
        quantize_transformer(src, tmp_path / "m.int8.onnx")
        with _without_preprocessing_advice():
            logging.warning("Please consider to run pre-processing before quantization.")
            logging.warning("another warning")
        logging.warning("Please consider: outside the quantizer calls this passes")
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("quantized m.onnx -> m.int8.onnx") for m in messages)
    assert "another warning" in messages and "Please consider: outside the quantizer calls this passes" in messages
    assert not any(m.startswith("Please consider to run") or m.startswith("Please consider pre-processing") for m in messages)


def test_a_quiet_export_prints_nothing(tiny_models):
    # the tiny export of this session ran with --quiet: no info lines, progress bars or library chatter
    # (Ultralytics' info, Hugging Face progress bars, onnxruntime's pre-processing advice)
    assert export_output(tiny_models).read_text() == ""


def test_export_without_its_extra_says_what_to_install(monkeypatch, capsys):
    import importlib.util

    from imgdiff_onnx import export as export_entry

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("transformers", "ultralytics") else real(name, *a))
    assert export_entry.main(["--out", "never-written"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'imgdiff-onnx[export]'" in err and "(missing: transformers, ultralytics)" in err


def _hf_cache_repo(hub: Path, repo_id: str, files: Path, revision: str) -> None:
    """`files` as the Hugging Face cache holds a downloaded repo: blobs by content hash, a snapshot of
    links to them under the commit, and refs/main naming the commit."""
    import hashlib

    repo = hub / ("models--" + repo_id.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True)
    (repo / "snapshots" / revision).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    for f in files.iterdir():
        blob = repo / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
        blob.write_bytes(f.read_bytes())
        (repo / "snapshots" / revision / f.name).symlink_to(os.path.relpath(blob, repo / "snapshots" / revision))


def test_hub_ids_export_offline_from_a_warm_hugging_face_cache(tiny_models, tmp_path, monkeypatch):
    """What a user with a warm cache runs: hub ids, HF_HUB_OFFLINE=1, nothing but the cache."""
    hf_home = tmp_path / "hf"
    revisions = {"openai/clip-vit-base-patch32": "a" * 40, "Salesforce/blip-itm-base-coco": "b" * 40}
    _hf_cache_repo(hf_home / "hub", "openai/clip-vit-base-patch32", tiny_models / "torch" / "clip", revisions["openai/clip-vit-base-patch32"])
    _hf_cache_repo(hf_home / "hub", "Salesforce/blip-itm-base-coco", tiny_models / "torch" / "blip", revisions["Salesforce/blip-itm-base-coco"])
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    out = run_export(tmp_path / "from-hub", "--clip", "openai/clip-vit-base-patch32", "--blip", "Salesforce/blip-itm-base-coco",
                     "--fastsam", str(tiny_models / "torch" / "fastsam.pt"), "--precision", "fp32")  # fmt: skip
    sources = _manifest(out)["sources"]
    for model, repo_id in (("clip", "openai/clip-vit-base-patch32"), ("blip", "Salesforce/blip-itm-base-coco")):
        assert sources[model]["given"] == repo_id and sources[model]["revision"] == revisions[repo_id]
        assert sources[model]["local_path"] == str(hf_home / "hub" / ("models--" + repo_id.replace("/", "--")) / "snapshots" / revisions[repo_id])
    feed = {"pixel_values": np.random.default_rng(0).normal(size=(2, 3, 224, 224)).astype(np.float32)}
    a = ort.InferenceSession(str(tiny_models / "clip_vision.fp32.onnx")).run(None, feed)
    b = ort.InferenceSession(str(out / "clip_vision.fp32.onnx")).run(None, feed)
    np.testing.assert_array_equal(a[0], b[0])


@pytest.mark.slow  # two export processes (each imports torch)
def test_the_exports_usage_errors_are_one_line_with_exit_2(tmp_path):
    """No SystemExit from the export's code: its user errors are ExportErrors, one line, exit 2."""
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("x")
    for args, message in ((["--precision", "int4", "--out", str(tmp_path / "new")], "--precision: expected a comma-separated subset"),
                          (["--out", str(tmp_path / "full")], "is not empty; pass --force")):  # fmt: skip
        proc = subprocess.run([sys.executable, "-m", "imgdiff_onnx.export", *args], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr
    assert (tmp_path / "full" / "mine.txt").read_text() == "x"
