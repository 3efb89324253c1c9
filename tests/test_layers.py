"""Who may import whom (DESIGN.md section 7), read from the source: the engine knows nothing of
runs, review, tuning or the command line; reading and reviewing results files knows nothing of the engine
(imports only for type checking are allowed)."""

from __future__ import annotations

import ast
from pathlib import Path

from .conftest import ROOT

PKG = ROOT / "imgdiff_onnx"


def _imports(path: Path) -> set[str]:
    """Absolute names of the modules a file imports at run time (not under `if TYPE_CHECKING:`)."""
    tree = ast.parse(path.read_text())
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                   for n in ast.walk(node)}  # fmt: skip
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found |= {f"{module}.{a.name}" for a in node.names} | {module}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return found


def _offenders(files: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    return [f"{p.relative_to(ROOT)} imports {name}" for p in files for name in sorted(_imports(p))
            if any(name == f or name.startswith(f + ".") for f in forbidden)]  # fmt: skip


def test_the_engine_imports_no_run_review_tuning_or_command_line_module():
    files = sorted((PKG / "engine").rglob("*.py"))
    assert len(files) > 20
    forbidden = ("imgdiff_onnx.runs", "imgdiff_onnx.review", "imgdiff_onnx.tuning", "imgdiff_onnx.__main__", "imgdiff_onnx.adapters")
    assert _offenders(files, forbidden) == []


def test_reading_and_reviewing_results_import_no_engine():
    files = [PKG / "runs" / "records.py", PKG / "runs" / "jsonlines.py", PKG / "review" / "report.py", PKG / "review" / "drawing.py",
             PKG / "runs" / "scores.py", PKG / "engine" / "decide.py", PKG / "tuning" / "sweep.py", PKG / "tuning" / "retune.py",
             PKG / "runs" / "jsonl.py", PKG / "runs" / "loop.py", PKG / "runs" / "outfolder.py",
             # shards: read without the engine (the report shows a shard run's pictures from them)
             *(PKG / "runs" / f"{name}.py" for name in ("shards", "columns", "parquet_source", "tar_source", "parquet_sink", "shard_results"))]  # fmt: skip
    engine_with_onnxruntime = ("imgdiff_onnx.engine.pipeline", "imgdiff_onnx.engine.modelset", "imgdiff_onnx.engine.models", "onnxruntime")
    assert _offenders(files, engine_with_onnxruntime) == []


def test_runs_import_nothing_from_tuning():
    """The arrows go one way: tuning reads what runs write (the kept scores are a run's output)."""
    files = sorted((PKG / "runs").rglob("*.py"))
    assert _offenders(files, ("imgdiff_onnx.tuning",)) == []


def test_the_check_sees_an_import():
    assert "imgdiff_onnx.runs.runfile" in _imports(PKG / "runs" / "jsonl.py") or "imgdiff_onnx.runs.runfile.RunIdentity" in _imports(PKG / "runs" / "jsonl.py")
    assert "imgdiff_onnx.engine.pipeline.DifferenceAreaGenerator" not in _imports(PKG / "runs" / "records.py")  # typing only
