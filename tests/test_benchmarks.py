"""Smoke test of the benchmark scripts on tiny models (speed figures come from full-size runs)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .conftest import ROOT, SHARED


def _run_benchmark(script: str, models, out, *args: str) -> None:
    cmd = [sys.executable, "-m", f"benchmarks.{Path(script).stem}", "--models", str(models), "--out", str(out), "--shared", str(SHARED), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_end_to_end_benchmark_runs_all_four_modes(tiny_models, tmp_path):
    out = tmp_path / "e2e"
    _run_benchmark("end_to_end.py", tiny_models, out, "--imgsz", "320", "--generated-pairs", "0")
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["modes"]) == {"reference", "torch_engine", "onnx_fp32", "onnx_int8"}
    for mode in summary["modes"].values():
        assert mode["seconds_per_pair"] > 0 and mode["peak_rss_mb"] > 0
        # CPU time of the worker's threads per pair, against wall time: how many cores the mode kept busy
        assert mode["cpu_seconds_per_pair"] > 0 and mode["cores_busy"] == mode["cpu_seconds_per_pair"] / mode["seconds_per_pair"]
    # the engine's algorithm gives the reference's boxes on the same fp32 weights
    assert summary["modes"]["onnx_fp32"]["box_f1_vs_reference"] == 1.0
    assert summary["modes"]["torch_engine"]["box_f1_vs_reference"] == 1.0
    assert (out / "table.md").read_text().count("|") > 20 and (out / "stages.png").stat().st_size > 0
    assert summary["cpu"]["family_model"] and (out / "table.md").read_text().startswith("CPU: ")


def test_per_model_benchmark_reports_every_model_and_column(tiny_models, tmp_path):
    out = tmp_path / "models"
    _run_benchmark("models.py", tiny_models, out, "--repeats", "1", "--fastsam-imgsz", "320")
    results = json.loads((out / "models.json").read_text())
    assert set(results["models"]) == {"clip_vision", "blip_vision", "blip_itm", "fastsam"}
    ceiling = results["ceiling"]
    assert min(ceiling["fp32_gmac_s"], ceiling["int8_gmac_s"], ceiling["torch_fp32_gmac_s"]) > 0
    for graph, data in results["models"].items():
        columns = {name.split(" b")[0] for name in data["rows"]}
        assert columns == {"torch_fp32", "ort_fp32", "ort_int8"}, graph
        for row in data["rows"].values():
            assert row["samples_per_s"] > 0 and row["cores_busy"] > 0
    table = (out / "table.md").read_text()
    assert all(f"| {graph} |" in table for graph in results["models"])


def test_cpu_description_reads_the_int8_instruction_sets(tmp_path):
    from benchmarks.machine import cpu_description, cpu_line

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC 9R14\ncpu family\t: 25\nmodel\t\t: 17\nflags\t\t: fpu avx2 avx512f avx512_vnni\n"
                    "processor\t: 1\nmodel name\t: AMD EPYC 9R14\ncpu family\t: 25\nmodel\t\t: 17\nflags\t\t: fpu avx2 avx512f avx512_vnni\n")
    cpu = cpu_description(info)
    assert cpu == {"model_name": "AMD EPYC 9R14", "family_model": "25/17", "avx2": True, "avx512f": True, "int8_dot_product": ["avx512_vnni"]}
    assert cpu_line(cpu) == "CPU: AMD EPYC 9R14 (family/model 25/17), AVX-512, avx512_vnni"
    info.write_text("model name\t: AMD EPYC\ncpu family\t: 25\nmodel\t\t: 1\nflags\t\t: fpu avx2\n")
    assert cpu_line(cpu_description(info)) == "CPU: AMD EPYC (family/model 25/1), AVX2, no VNNI"
    assert cpu_description(tmp_path / "absent")["int8_dot_product"] == []


def test_soak_benchmark_samples_memory_and_descriptors(tiny_models, tmp_path):
    out = tmp_path / "soak"
    cmd = [sys.executable, "-m", "benchmarks.soak", "--models", str(tiny_models), "--out", str(out), "--pairs", "12", "--threads", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "soak.json").read_text())
    assert result["lines_written"] == 12 and result["samples"]
    assert all(s["rss_mb"] > 0 and s["fds"] > 0 for s in result["samples"])
    assert set(result["summary"]["rss_mb"]) == {"0.1", "0.5", "1.0"}
    assert "RSS slope" in (out / "table.md").read_text()


def test_fastsam_layout_benchmark_runs_and_finds_the_layouts_equal(tiny_models):
    cmd = [sys.executable, "-m", "benchmarks.fastsam_threads", "--models", str(tiny_models), "--precision", "int8", "--shared", str(SHARED)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert out.count("cpu") == 5
    assert "batch of 2 equals: True" in out and "at once equals: True" in out


def test_prototype_tiles_benchmark_runs_and_finds_the_same_boxes(tiny_models, tmp_path):
    cmd = [sys.executable, "-m", "benchmarks.fastsam_prototypes", "--models", str(tiny_models), "--precision", "fp32",
           "--imgsz", "320", "--repeats", "1", "--shared", str(SHARED), "--out", str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "summary_fp32.json").read_text())
    assert len(summary["rows"]) == 7 and all(r["same_boxes"] for r in summary["rows"])
    assert all(0 <= r["tiles_computed"] <= 1 for r in summary["rows"]) and any(r["tiles_computed"] < 1 for r in summary["rows"])
    assert "| all |" in proc.stdout


def test_memory_start_benchmark_reports_each_configuration(tiny_models, tmp_path):
    out = tmp_path / "memory"
    _run_benchmark("memory_start.py", tiny_models, out, "--rounds", "1", "--configs", "default,memory-off")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["configs"] == ["default", "memory-off"] and summary["same_boxes_every_round"] == {"default": True, "memory-off": True}
    for config in summary["configs"]:
        (run,) = summary["runs"][config]
        assert 0 < run["load_s"] < run["ready_s"] and 0 < run["rss_ready_mb"] <= run["peak_rss_mb"]
        assert len(run["rows"]) == 1 and run["rows"][0]["candidates"] > 0
    assert (out / "table.md").read_text().startswith("CPU: ")


def test_op_profile_splits_a_graph_run_by_operator_type(tiny_models, tmp_path):
    out = tmp_path / "ops"
    _run_benchmark("op_profile.py", tiny_models, out, "--graph", "fastsam", "--precision", "fp32", "--imgsz", "320", "--runs", "1")
    result = json.loads((out / "fastsam_fp32.json").read_text())
    assert result["input_shapes"] == {"images": [1, 3, 320, 320]}
    assert result["cpu_seconds_per_run"][0] > 0 and abs(sum(o["share"] for o in result["ops"]) - 1) < 1e-6
    assert "Conv" in {o["op"] for o in result["ops"]} and sorted(p.name for p in out.iterdir()) == ["fastsam_fp32.json", "fastsam_fp32.md"]


def test_op_profile_builds_and_profiles_the_int8_attention_variant(tiny_models, tmp_path):
    out = tmp_path / "ops"
    _run_benchmark("op_profile.py", tiny_models, out, "--graph", "blip_vision", "--precision", "int8-attention", "--batch", "1", "--runs", "1")
    _run_benchmark("op_profile.py", tiny_models, out, "--graph", "blip_vision", "--precision", "int8", "--batch", "1", "--runs", "1")
    variant, shipped = (json.loads((out / f"blip_vision_{p}.json").read_text()) for p in ("int8-attention", "int8"))
    # products are split by whether one input is a weight: the shipped graph's attention products are float ...
    float_products = {"MatMul of two activations", "FusedMatMul of two activations"}
    shipped_ops = {o["op"] for o in shipped["ops"]}
    assert shipped_ops & float_products and "DynamicQuantizeMatMul" in shipped_ops
    assert "DynamicQuantizeMatMul of two activations" not in shipped_ops
    # ... and the variant's are int8, with no float product left
    variant_ops = {o["op"] for o in variant["ops"]}
    assert "DynamicQuantizeMatMul of two activations" in variant_ops and "DynamicQuantizeMatMul" in variant_ops
    assert not variant_ops & (float_products | {"MatMul", "FusedMatMul"})
    assert variant["max_abs_difference_vs_fp32"] > 0 and variant["int8_max_abs_difference_vs_fp32"] > 0
    # the rebuilt graph is not left behind
    assert sorted(p.name for p in out.iterdir()) == sorted(f"blip_vision_{p}.{e}" for p in ("int8", "int8-attention") for e in ("json", "md"))


def test_op_profile_refuses_int8_attention_for_fastsam(tiny_models, tmp_path):
    cmd = [sys.executable, "-m", "benchmarks.op_profile", "--models", str(tiny_models), "--out", str(tmp_path), "--graph", "fastsam", "--precision", "int8-attention"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and "vision towers" in proc.stderr


def test_scaling_benchmark_interleaves_rounds_and_compares_a_baseline_checkout(tiny_models, tmp_path):
    # the baseline configuration runs another checkout's `python -m imgdiff_onnx run`; this checkout stands in for it
    out = tmp_path / "scaling"
    _run_benchmark("ray_scaling.py", tiny_models, out, "--pairs", "1", "--rounds", "2", "--configs", "single-1x2,baseline",
                   "--reference", "baseline", "--baseline-code", str(ROOT))  # fmt: skip
    summary = json.loads((out / "ray_scaling.json").read_text())
    assert summary["reference"] == "baseline" and summary["identical_boxes"] is True
    assert set(summary["configs"]) == {"single-1x2", "baseline"}
    for name, config in summary["configs"].items():
        assert [run["round"] for run in config["runs"]] == [0, 1]
        assert all(run["seconds"] > 0 and run["machine_cpu_seconds"] > 0 and run["steal_seconds"] >= 0 for run in config["runs"])
        assert ("cpu_seconds" in config["runs"][0]) and len(config["speed_vs_reference"]) == 2
    assert summary["configs"]["baseline"]["speed_vs_reference"] == [1.0, 1.0]
    # the second round starts with the other configuration
    logs = sorted(out.glob("log_*.txt"), key=lambda p: p.stat().st_mtime)
    assert [p.stem for p in logs] == ["log_single-1x2_r0", "log_baseline_r0", "log_baseline_r1", "log_single-1x2_r1"]
    single = summary["configs"]["single-1x2"]
    assert single["best_seconds"] == min(run["seconds"] for run in single["runs"])
    assert single["best_speed_vs_reference"] == round(summary["configs"]["baseline"]["best_seconds"] / single["best_seconds"], 3)
    # the summary can be recomputed from the saved runs alone
    table = (out / "table.md").read_text()
    (out / "table.md").unlink()
    proc = subprocess.run([sys.executable, "-m", "benchmarks.ray_scaling", "--out", str(out), "--resummarize"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "table.md").read_text() == table and json.loads((out / "ray_scaling.json").read_text()) == summary


def test_machine_cpu_seconds_reads_busy_and_steal_time(tmp_path):
    import os

    from benchmarks.ray_scaling import machine_cpu_seconds

    stat = tmp_path / "stat"
    tick = os.sysconf("SC_CLK_TCK")
    # user nice system idle iowait irq softirq steal guest guest_nice
    stat.write_text(f"cpu  {10 * tick} {1 * tick} {4 * tick} {500 * tick} {7 * tick} {2 * tick} {3 * tick} {6 * tick} 0 0\ncpu0 1 2 3\n")
    assert machine_cpu_seconds(stat) == (20.0, 6.0)


def test_resume_scale_benchmark_resumes_after_the_completed_lines(tiny_models, tmp_path):
    out = tmp_path / "resume"
    cmd = [sys.executable, "-m", "benchmarks.resume_scale", "--models", str(tiny_models), "--out", str(out), "--lines", "300"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]  # it checks the file has every line after the resume
    result = json.loads((out / "resume_scale.json").read_text())
    assert result["lines"] == 300 and 0 < result["seconds_to_first_new_line"] <= result["seconds_total"] and result["peak_rss_mb"] > 0


def test_caption_limits_benchmark_reports_exact_results_and_limits(tmp_path):
    out = tmp_path / "captions"
    cmd = [sys.executable, "-m", "benchmarks.caption_limits", "--out", str(out), "--words", "300,12000", "--cases", "distinct"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((out / "caption_limits.json").read_text())["rows"]
    assert rows[0]["outcome"].startswith("exact") and rows[1]["outcome"].startswith("record error") and "limit 64,000,000" in rows[1]["outcome"]


def test_batch_memory_benchmark_scores_growing_batches(tiny_models, tmp_path):
    out = tmp_path / "batch"
    _run_benchmark("batch_memory.py", tiny_models, out, "--batches", "1,2")
    rows = json.loads((out / "batch_memory.json").read_text())["rows"]
    assert [r["batch"] for r in rows] == [1, 2] and rows[1]["candidates"] == 2 * rows[0]["candidates"] > 0
    assert not rows[1]["errors"] and all(r["peak_rss_mb"] >= r["rss_ready_mb"] > 0 for r in rows)


def test_shard_benchmarks_measure_reading_memory_results_and_resume(tiny_models, tmp_path):
    from benchmarks import shard_io, shard_resume

    assert shard_io.main(["--out", str(tmp_path / "io"), "--models", str(tiny_models), "--pairs", "3", "--big-gb", "0.02"]) == 0
    record = json.loads((tmp_path / "io" / "shard_io.json").read_text())
    assert set(record["reading"]) == {"jsonl + files", "parquet", "webdataset"}
    assert all(r["identical_to_jsonl"] and r["rows"] == 6 for r in record["results"].values())
    assert record["big"]["parquet"]["records"] == record["big"]["webdataset"]["records"] > 0
    assert shard_resume.main(["--models", str(tiny_models), "--out", str(tmp_path / "resume"), "--shards", "12"]) == 0
    assert json.loads((tmp_path / "resume" / "shard_resume.json").read_text())["shards"] == 12
