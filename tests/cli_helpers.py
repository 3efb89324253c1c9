"""Helpers of the command-line tests (shared by several test files): the `python -m imgdiff_onnx`
call, the arguments of a run on the `dataset` fixture (conftest.py), reading a results file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PARAMS = {
    "image_pair_similarity_filter_args": {"min_score_1": -1, "min_score_2": -1},
    "image_segment_mapper_args": {"imgsz": 320},
    "image_text_matching_filter_args": {"min_score": 0},
}


def _cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "imgdiff_onnx", *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def _run_args(models, dataset, output, *extra):
    return ["run", "--models", str(models), "--input", str(dataset), "--output", str(output), "--params", str(dataset.parent / "params.json"),
            "--threads", "1", "--quiet", *extra]


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]
