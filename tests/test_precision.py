"""Precision per model: parsing, the default and where it comes from, mixed engines, `validate`."""

from __future__ import annotations

from types import SimpleNamespace

import json
import re
import shutil

import numpy as np
import pytest

from imgdiff_onnx import DifferenceAreaGenerator, EngineSettings, ManifestError, OperatorParams, PairInput, RunError
from imgdiff_onnx.engine.modelset import ModelSet, resolve_precision
from imgdiff_onnx.engine.precision import DEFAULT, Precision, PrecisionError
from imgdiff_onnx.review.validate import ValidateOptions, compare, run_config, validate
from imgdiff_onnx.engine.modelset import SessionPool
from imgdiff_onnx.review.validate_report import write_outputs, write_recommendation

from .conftest import PAIR1, PAIR2, PAIR_CAPTIONS
from .cli_helpers import _cli

# the suite runs on pytest-xdist workers: this file's tests stay on one worker, where they share
# module fixtures that take seconds to compute
pytestmark = pytest.mark.xdist_group("precision")

OPEN = OperatorParams.from_dicts({"min_score_1": -1, "min_score_2": -1, "max_score_2": 1}, {"imgsz": 640}, {"min_score": 0, "max_score": 1})
# thresholds inside the tiny models' score ranges, so gates decide something
CLOSED = {
    "image_pair_similarity_filter_args": {"min_score_1": -1, "min_score_2": -1, "max_score_2": 0.97},
    "image_segment_mapper_args": {"imgsz": 320},
    "image_text_matching_filter_args": {"min_score": 0.3},
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("int8", {"clip": "int8", "blip": "int8", "fastsam": "int8"}),
        ("fp32", {"clip": "fp32", "blip": "fp32", "fastsam": "fp32"}),
        ("fastsam=fp32,clip=int8,blip=int8", {"clip": "int8", "blip": "int8", "fastsam": "fp32"}),
        ("int8, fastsam=fp32", {"clip": "int8", "blip": "int8", "fastsam": "fp32"}),
        ("fp32,clip=int8", {"clip": "int8", "blip": "fp32", "fastsam": "fp32"}),
        ("blip=fp32", {"clip": "banded", "blip": "fp32", "fastsam": "fp32"}),  # others: the default
        ({"fastsam": "int8", "clip": "fp32"}, {"clip": "fp32", "blip": "banded", "fastsam": "int8"}),
        ("banded", {"clip": "banded", "blip": "banded", "fastsam": "fp32"}),  # nothing to band in FastSAM: fp32
    ],
)
def test_precision_parses_words_per_model_choices_and_mappings(text, expected):
    assert Precision.parse(text).to_dict() == expected


def test_precision_prints_back_in_the_syntax_it_reads():
    assert str(Precision.parse("int8")) == "int8"
    assert str(DEFAULT) == "clip=banded,blip=banded,fastsam=fp32"
    assert Precision.parse(str(DEFAULT)) == DEFAULT


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("int4", "must be fp32, int8 or banded, got 'int4'"),
        ("fastsam=fp16", "fastsam must be fp32, int8 or banded"),
        ("sam=fp32", "unknown model 'sam'; models are clip, blip, fastsam"),
        ("", "empty precision"),
        (8, "must be a string or a mapping"),
    ],
)
def test_bad_precision_is_refused_with_its_reason(value, message):
    with pytest.raises(PrecisionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Precision.parse(value)
    with pytest.raises(PrecisionError):
        EngineSettings(precision=value)


def test_default_keeps_fastsam_fp32_and_says_where_it_came_from(tiny_models):
    models = ModelSet(tiny_models)
    assert models.precision == DEFAULT and models.precision_origin == "built-in default"
    assert {g: i.path.name for g, i in models.graphs.items()} == {
        "clip_vision": "clip_vision.int8.onnx",
        "blip_vision": "blip_vision.int8.onnx",
        "blip_itm": "blip_itm.int8.onnx",
        "fastsam": "fastsam.fp32.onnx",
        "fastsam_proto": "fastsam_proto.fp32.onnx",  # the prototype head follows FastSAM's precision
    }


def test_resolution_order_given_then_recommended_then_default():
    manifest = SimpleNamespace(precisions=("fp32", "int8"), recommended_precision=None, guard_band=object())
    assert resolve_precision(None, manifest, "m") == (DEFAULT, "built-in default")
    manifest.recommended_precision = {"precision": {"clip": "int8", "blip": "fp32", "fastsam": "fp32"}, "by": "validate"}
    assert resolve_precision(None, manifest, "m")[0].to_dict() == {"clip": "int8", "blip": "fp32", "fastsam": "fp32"}
    assert "recommendation (validate)" in resolve_precision(None, manifest, "m")[1]
    assert resolve_precision("int8", manifest, "m") == (Precision.uniform("int8"), "given")


def test_fp32_only_folder_defaults_to_fp32_and_refuses_int8():
    manifest = SimpleNamespace(precisions=("fp32",), recommended_precision=None, guard_band=None)
    assert resolve_precision(None, manifest, "m")[0] == Precision.uniform("fp32")
    with pytest.raises(ManifestError, match="needs int8 graphs, but the folder was exported with fp32"):
        resolve_precision("clip=int8", manifest, "m")


def test_unreadable_recommendation_is_a_model_folder_error():
    with pytest.raises(ManifestError, match="recommended_precision"):
        resolve_precision(None, SimpleNamespace(precisions=("fp32", "int8"), recommended_precision={"precision": "int4"}, guard_band=None), "m")


@pytest.fixture(scope="module")
def fp32_result(tiny_models):
    engine = DifferenceAreaGenerator(tiny_models, OPEN, EngineSettings(precision="fp32", threads=2))
    return engine.process(PairInput(PAIR1, PAIR2, *PAIR_CAPTIONS))


def test_default_mix_keeps_the_fp32_candidates_exactly(tiny_models, fp32_result):
    engine = DifferenceAreaGenerator(tiny_models, OPEN, EngineSettings(threads=2))
    result = engine.process(PairInput(PAIR1, PAIR2, *PAIR_CAPTIONS))
    assert fp32_result.candidate_boxes is not None and len(fp32_result.candidate_boxes) > 5
    np.testing.assert_array_equal(result.candidate_boxes, fp32_result.candidate_boxes)


def test_int8_fastsam_runs_another_graph(tiny_models, fp32_result):
    engine = DifferenceAreaGenerator(tiny_models, OPEN, EngineSettings(precision="fp32,fastsam=int8", threads=2))
    assert engine.models.graphs["fastsam"].path.name == "fastsam.int8.onnx"
    assert engine.models.graphs["clip_vision"].path.name == "clip_vision.fp32.onnx"
    result = engine.process(PairInput(PAIR1, PAIR2, *PAIR_CAPTIONS))
    assert result.candidate_boxes is not None


def test_diagnostics_are_kept_only_when_asked_for(tiny_models, fp32_result):
    assert fp32_result.diagnostics == {}
    engine = DifferenceAreaGenerator(tiny_models, OPEN, EngineSettings(precision="fp32", threads=2, diagnostics=True))
    result = engine.process(PairInput(PAIR1, PAIR2, *PAIR_CAPTIONS))
    np.testing.assert_array_equal(result.boxes, fp32_result.boxes)
    crop_pair = result.diagnostics["crop_pair"]
    assert len(crop_pair) == result.counts["unique_windows"]
    words = {word for (_, word) in result.diagnostics["itm_image1"]}
    assert words <= set(result.objects1) and words


def test_compare_a_run_with_itself_is_all_agreement(tiny_models):
    pairs = [PairInput(PAIR1, PAIR2, *PAIR_CAPTIONS, key="real")]
    run = run_config("fp32", tiny_models, Precision.uniform("fp32"), OPEN, pairs, ValidateOptions(threads=2), SessionPool())
    figures = compare(run, run, OPEN)
    assert figures["final_boxes"]["f1"] == 1.0 and figures["candidates"]["f1"] == 1.0
    assert figures["crop_pair_similarity"]["max_abs_delta"] == 0.0 and figures["crop_pair_similarity"]["compared"] > 0
    assert figures["itm_probability"]["decision_flips"] == 0 and figures["status_differs"] == 0


@pytest.fixture(scope="module")
def validation(tiny_models, tmp_path_factory):
    folder = tmp_path_factory.mktemp("validate")
    lines = [
        {"id": "real", "caption1": PAIR_CAPTIONS[0], "caption2": PAIR_CAPTIONS[1], "image_path1": str(PAIR1), "image_path2": str(PAIR2)},
        {"id": "objs", "image_path1": str(PAIR1), "image_path2": str(PAIR2), "objects1": ["plane"], "objects2": ["boat"]},
        "{broken",
    ]
    (folder / "pairs.jsonl").write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    (folder / "params.json").write_text(json.dumps(CLOSED))
    models = folder / "models"
    shutil.copytree(tiny_models, models)
    shutil.copy(models / "manifest.json", folder / "exported_manifest.json")
    return folder, models


def test_validate_command_reports_every_stage_and_writes_its_recommendation(validation):
    folder, models = validation
    out = folder / "report"
    proc = _cli("validate", "--models", str(models), "--input", str(folder / "pairs.jsonl"), "--params", str(folder / "params.json"),
                "--out", str(out), "--threads", "2", "--min-saving", "0", "--write", "--quiet")  # fmt: skip
    summary = json.loads((out / "validation.json").read_text())
    assert summary["pairs"] == 2 and len(summary["skipped_lines"]) == 1 and "line 3" in summary["skipped_lines"][0]
    names = [c["name"] for c in summary["configs"]]
    assert names[:4] == ["fp32", "clip int8", "blip int8", "fastsam int8"]
    by_name = {c["name"]: c for c in summary["configs"]}
    # FastSAM fp32 in the clip and blip runs: the candidates are the fp32 run's, exactly
    for name in ("clip int8", "blip int8"):
        assert by_name[name]["figures"]["candidates"] == {"f1": 1.0, "count_change": 0, "compared_pairs": 2}
    assert by_name["clip int8"]["figures"]["crop_pair_similarity"]["max_abs_delta"] > 0  # int8 CLIP moves scores
    assert by_name["blip int8"]["figures"]["crop_pair_similarity"]["max_abs_delta"] == 0.0  # fp32 CLIP there
    assert by_name["blip int8"]["figures"]["itm_probability"]["compared"] > 0
    assert (out / "validation.md").read_text().count("\n| ") >= 5 and (out / "validation.png").stat().st_size > 1000
    assert "Recommended precision" in proc.stdout
    # each verdict follows from its own figures
    for model, v in summary["verdicts"].items():
        f1 = by_name[f"{model} int8"]["figures"]["final_boxes"]["f1"]
        if f1 < 0.99:
            assert v["precision"] == "fp32", v
    # the guard band: per score the margin, the largest int8 error here, the banded run's re-scores
    assert names[-1] == "clip+blip banded" and by_name["clip+blip banded"]["figures"]["final_boxes"]["f1"] == 1.0
    band = summary["guard_band"]["scores"]
    assert set(band) == {"pair_similarity", "crop_similarity", "itm_probability"}
    crop = band["crop_similarity"]
    assert crop["max_error_here"] == by_name["clip int8"]["figures"]["crop_pair_similarity"]["max_abs_delta"]
    assert crop["margin_here"] == 2 * crop["max_error_here"] and crop["scored"] > 0
    assert "## Guard band" in (out / "validation.md").read_text()
    for model in ("clip", "blip"):  # banded when int8 saves at least --min-saving (0 here; tiny models' timings are noise)
        saves = by_name[f"{model} int8"]["timing"]["cpu_saving_vs_fp32"] >= 0
        assert summary["verdicts"][model]["precision"] == ("banded" if saves else "fp32")
    recommended = summary["recommended_precision"]
    manifest = json.loads((models / "manifest.json").read_text())
    # --write widened each margin these pairs exceed, and kept the others
    exported = json.loads((folder / "exported_manifest.json").read_text())["guard_band"]
    for score, f in band.items():
        expected = max(exported[score]["margin"], f["margin_here"] or 0.0)
        assert manifest["guard_band"][score]["margin"] == expected
        assert manifest["guard_band"][score]["by"] == ("validate" if expected > exported[score]["margin"] else "export")
    assert manifest["recommended_precision"]["precision"] == recommended
    loaded = ModelSet(models)
    assert loaded.precision.to_dict() == recommended and "validate" in loaded.precision_origin


def test_validate_refuses_an_input_without_pairs(tiny_models, tmp_path):
    (tmp_path / "empty.jsonl").write_text("{broken\n")
    with pytest.raises(RunError, match="no readable pairs"):
        validate(tiny_models, OPEN, tmp_path / "empty.jsonl", ValidateOptions())


def test_validate_outputs_render_from_a_summary(tmp_path):
    config = {"name": "fp32", "precision": "fp32", "figures": None, "timing": {"wall_s_per_pair": 1.0, "cpu_s_per_pair": 2.0, "cpu_saving_vs_fp32": 0.0}}
    summary = {
        "models": "m", "input": "i", "pairs": 1, "skipped_lines": [], "pair_errors": 0, "params": {}, "random_init": True,
        "options": {"min_box_f1": 0.99, "min_candidate_f1": 0.99, "min_saving": 0.05, "threads": 2, "limit": None},
        "configs": [config], "verdicts": {}, "mix_checks": [], "recommended_precision": Precision.uniform("fp32").to_dict(),
        "recommended_precision_text": "fp32", "current_default": {"precision": str(DEFAULT), "origin": "built-in default"}, "cpu": "test cpu",
    }  # fmt: skip
    paths = write_outputs(summary, tmp_path)
    text = paths["markdown"].read_text()
    # every table row has the header's number of cells: the |Δ| in the header is escaped
    rows = [line for line in text.splitlines() if line.startswith("|")]
    cells = [len(re.split(r"(?<!\\)\|", row)) for row in rows]
    assert len(rows) == 3 and len(set(cells)) == 1, rows
    assert "max \\|Δ\\|" in rows[0]
    assert "| fp32 | 2.00 | 1.00 | +0% | (reference)" in text and "**random-init weights**" in text and "test cpu" in text


def test_run_cli_accepts_a_per_model_precision_and_refuses_a_bad_one(tiny_models, tmp_path):
    data = tmp_path / "p.jsonl"
    data.write_text(json.dumps({"image_path1": str(PAIR1), "image_path2": str(PAIR2), "objects1": ["plane"], "objects2": ["boat"]}) + "\n")
    args = ["run", "--models", str(tiny_models), "--input", str(data), "--threads", "1", "--quiet"]
    _cli(*args, "--output", str(tmp_path / "a.jsonl"), "--precision", "int8,fastsam=fp32")
    assert json.loads((tmp_path / "a.jsonl").read_text())["imgdiff"]["status"] == "ok"
    proc = _cli(*args, "--output", str(tmp_path / "b.jsonl"), "--precision", "fastsam=int4", check=False)
    assert proc.returncode == 2 and "fastsam must be fp32, int8 or banded" in proc.stderr and "Traceback" not in proc.stderr


def test_write_recommendation_keeps_the_rest_of_the_manifest(validation, tmp_path):
    _, models = validation
    copy = tmp_path / "m"
    shutil.copytree(models, copy)
    before = json.loads((copy / "manifest.json").read_text())
    summary = {"recommended_precision": Precision.uniform("fp32").to_dict(), "input": "x", "pairs": 3, "cpu": "c", "verdicts": {},
               "options": {"min_box_f1": 0.99, "min_candidate_f1": 0.99, "min_saving": 0.05}}  # fmt: skip
    write_recommendation(copy, summary)
    after = json.loads((copy / "manifest.json").read_text())
    assert after["recommended_precision"]["precision"] == {"clip": "fp32", "blip": "fp32", "fastsam": "fp32"}
    assert {k: v for k, v in after.items() if k != "recommended_precision"} == {k: v for k, v in before.items() if k != "recommended_precision"}


def test_model_sources_in_the_parameters_are_compared_with_the_folders_export():
    """hf_clip / hf_blip / model_path name the models a recipe wants; the folder's manifest says
    what it was exported from. The same model written another way (a local copy, the HF cache)
    agrees; another model is named, both sides."""
    from types import SimpleNamespace

    from imgdiff_onnx.engine.manifest import source_mismatches

    manifest = SimpleNamespace(sources={
        "clip": {"given": "openai/clip-vit-base-patch32", "local_path": "/cache/hub/models--openai--clip-vit-base-patch32/snapshots/abc"},
        "blip": {"given": "/data/blip-itm-base-coco", "local_path": "/data/blip-itm-base-coco"},
        "fastsam": {"given": "/weights/FastSAM-x.pt", "local_path": "/weights/FastSAM-x.pt"},
    })  # fmt: skip
    same = {"clip": "openai/clip-vit-base-patch32", "blip": "Salesforce/blip-itm-base-coco", "fastsam": "FastSAM-x.pt"}
    assert source_mismatches(manifest, same) == []
    other = {"clip": "openai/clip-vit-large-patch14", "blip": "Salesforce/blip-itm-large-coco", "fastsam": "FastSAM-s.pt"}
    assert source_mismatches(manifest, other) == [
        "clip: the parameters name 'openai/clip-vit-large-patch14', the folder was exported from 'openai/clip-vit-base-patch32'",
        "blip: the parameters name 'Salesforce/blip-itm-large-coco', the folder was exported from '/data/blip-itm-base-coco'",
        "fastsam: the parameters name 'FastSAM-s.pt', the folder was exported from '/weights/FastSAM-x.pt'",
    ]
    assert source_mismatches(SimpleNamespace(sources={}), other) == []  # a folder that records no sources: nothing to compare


def test_the_engine_warns_when_the_parameters_name_other_models_than_the_folder(tiny_models, tmp_path, caplog):
    import logging
    import shutil
    from pathlib import Path

    from imgdiff_onnx import DifferenceAreaGenerator, EngineSettings, OperatorParams

    folder = tmp_path / "models"
    shutil.copytree(tiny_models, folder, ignore=shutil.ignore_patterns("torch"))
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest.pop("random_init")  # as a folder of real weights (the check is off for random-init stand-ins)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    params = OperatorParams.from_dicts({"hf_clip": Path(manifest["sources"]["clip"]["given"]).name}, None, {"hf_blip": "Salesforce/blip-itm-large-coco"})
    with caplog.at_level(logging.WARNING, logger="imgdiff_onnx"):
        DifferenceAreaGenerator(folder, params, EngineSettings(precision="int8", threads=1)).close()
    said = [r.getMessage() for r in caplog.records if "the parameters name" in r.getMessage()]
    assert len(said) == 2 and said[0].startswith("blip: the parameters name 'Salesforce/blip-itm-large-coco', the folder was exported from ")
    assert said[1].startswith("fastsam: the parameters name 'FastSAM-x.pt'") and "the folder's model runs" in said[1]  # clip agrees: its folder's name
