"""Smoke test of the benchmark scripts on tiny models (speed figures come from full-size runs)."""

from __future__ import annotations

import json
import subprocess
import sys

from .conftest import ROOT, SHARED


def test_end_to_end_benchmark_runs_all_four_modes(tiny_models, tmp_path):
    out = tmp_path / "e2e"
    cmd = [sys.executable, str(ROOT / "benchmarks/end_to_end.py"), "--models", str(tiny_models), "--out", str(out),
           "--imgsz", "320", "--generated-pairs", "0", "--shared", str(SHARED)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["modes"]) == {"reference", "torch_engine", "onnx_fp32", "onnx_int8"}
    for mode in summary["modes"].values():
        assert mode["seconds_per_pair"] > 0 and mode["peak_rss_mb"] > 0
    # the engine's algorithm gives the reference's boxes on the same fp32 weights
    assert summary["modes"]["onnx_fp32"]["box_f1_vs_reference"] == 1.0
    assert summary["modes"]["torch_engine"]["box_f1_vs_reference"] == 1.0
    assert (out / "table.md").read_text().count("|") > 20 and (out / "stages.png").stat().st_size > 0
