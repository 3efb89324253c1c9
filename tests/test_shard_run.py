"""Shard runs through the real engine (tiny models) and the command line: the same pairs as JSON
Lines + files, as Parquet and as WebDataset shards give the same results (EXIF-rotated, transparent,
grey and 16-bit pictures among them), and a run killed with SIGKILL in the middle of a shard and
resumed writes the uninterrupted run's files byte for byte."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import imgdiff_command
from .shard_data import content, folder_rows, jsonl_rows, make_pairs

# every gate open (the crop-pair gate stops only identical crops), so that every pair is segmented and its crops scored
OPEN = ("image_pair_similarity_filter_args: {min_score_1: -1, max_score_1: 0.99999, min_score_2: -1, max_score_2: 0.99999}\n"
        "image_segment_mapper_args: {imgsz: 320}\nimage_text_matching_filter_args: {min_score: 0}\n")  # fmt: skip


def _cli(folder: Path, *args: str) -> None:
    proc = subprocess.run(imgdiff_command(*args, "--quiet"), cwd=folder, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{args}\n{proc.stderr[-3000:]}"


@pytest.fixture(scope="module")
def runs(tiny_models, tmp_path_factory) -> Path:
    """The pairs run as JSON Lines, packed and run as Parquet (results as Parquet) and as tars."""
    folder = tmp_path_factory.mktemp("shard-run")
    make_pairs(folder, n=6, size=160)
    (folder / "open.yaml").write_text(OPEN)
    models = str(tiny_models)
    _cli(folder, "run", "--models", models, "--input", "pairs.jsonl", "--output", "results.jsonl", "--params", "open.yaml")
    for fmt, suffix, extra in (("parquet", "parquet", ["--output-format", "parquet"]), ("webdataset", "tar", [])):
        _cli(folder, "pack", "--input", "pairs.jsonl", "--out", f"{fmt}-shards", "--format", fmt, "--pairs-per-shard", "2")
        _cli(folder, "run", "--models", models, "--input", f"{fmt}-shards/*.{suffix}", "--output", f"{fmt}-results", "--params", "open.yaml", *extra)
    return folder


@pytest.mark.parametrize("fmt", ["parquet", "webdataset"])
def test_shards_give_the_json_lines_runs_results_through_the_engine(runs, fmt):
    reference = jsonl_rows(runs / "results.jsonl")
    assert all(r["imgdiff"]["status"] == "ok" and r["imgdiff"]["counts"]["candidates"] > 0 for r in reference)  # the gates had work
    assert sum(len(r["imgdiff"]["boxes"]) for r in reference) > 0
    assert [content(r) for r in folder_rows(runs / f"{fmt}-results")] == [content(r) for r in reference]


def test_a_run_killed_in_the_middle_of_a_shard_and_resumed_writes_the_same_files(runs, tiny_models):
    args = ["run", "--models", str(tiny_models), "--input", "webdataset-shards", "--output", "killed", "--params", "open.yaml",
            "--pairs-per-batch", "1"]  # fmt: skip
    proc = subprocess.Popen(imgdiff_command(*args, "--quiet"), cwd=runs, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = runs / "killed" / ".00001.jsonl.partial"
    deadline = time.time() + 600
    while not (partial.exists() and partial.stat().st_size > 0) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert (runs / "killed" / "00000.jsonl").is_file() and not (runs / "killed" / "00001.jsonl").exists()  # killed inside shard 00001
    _cli(runs, *args, "--resume")
    for name in ("00000.jsonl", "00001.jsonl", "00002.jsonl"):
        assert (runs / "killed" / name).read_bytes() == (runs / "webdataset-results" / name).read_bytes(), name
    assert not list((runs / "killed").glob(".*.partial"))


def test_validate_on_shards_measures_what_it_measures_on_the_json_lines_file(runs, tiny_models):
    import json

    for name, spec in (("val-jsonl", "pairs.jsonl"), ("val-shards", "webdataset-shards/*.tar")):
        _cli(runs, "validate", "--models", str(tiny_models), "--input", spec, "--out", name, "--params", "open.yaml", "--limit", "2")
    a, b = (json.loads((runs / name / "validation.json").read_text()) for name in ("val-jsonl", "val-shards"))
    assert a["pairs"] == b["pairs"] == 2 and a["pair_errors"] == b["pair_errors"]
    assert [c["figures"] for c in a["configs"]] == [c["figures"] for c in b["configs"]]
    numbers = ("max_error_here", "compared", "scored", "rescored")
    assert {s: {k: v.get(k) for k in numbers} for s, v in a["guard_band"]["scores"].items()} == \
        {s: {k: v.get(k) for k in numbers} for s, v in b["guard_band"]["scores"].items()}  # fmt: skip
