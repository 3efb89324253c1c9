"""README's own-data steps, run as written: its fenced blocks of the section "Your own data in three
steps" are read from README.md and run in an empty folder that holds only what the section says
the user brings (pictures, the models folder), so README cannot drift from the code."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import PAIR1, PAIR2, ROOT


def _section(title: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else len(text)]


def _blocks(section: str, language: str) -> list[str]:
    return [re.sub(r"^\s+", "", b, flags=re.M).strip() for b in re.findall(rf"```{language}\n(.*?)```", section, re.S)]


def _user_folder(folder: Path, record_text: str, models: Path) -> dict:
    """What the user brings: the pictures the record names, the exported models, pairs.jsonl."""
    record = json.loads(record_text)
    for key, source in (("image_path1", PAIR1), ("image_path2", PAIR2)):
        (folder / record[key]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, folder / record[key])
    shutil.copytree(models, folder / "models", ignore=shutil.ignore_patterns("torch"))
    (folder / "pairs.jsonl").write_text(record_text + "\n", encoding="utf-8")
    return record


def test_the_own_data_steps_run_as_written_in_an_empty_folder(tiny_models, tmp_path):
    home, tmp_path = tmp_path / "home", tmp_path / "work"
    tmp_path.mkdir()
    section = _section("Your own data in three steps")
    [record_text] = _blocks(section, "json")
    commands = _blocks(section, "bash")
    assert len(commands) == 2 and all(c.startswith("python -m imgdiff_onnx ") for c in commands)
    record = _user_folder(tmp_path, record_text, tiny_models)
    # no NLTK data anywhere: no NLTK_DATA, and a home folder without nltk_data
    env = {k: v for k, v in os.environ.items() if k != "NLTK_DATA"} | {"HOME": str(home)}
    for command in commands:
        argv = shlex.split(command)
        proc = subprocess.run([sys.executable, *argv[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=900, env=env)
        assert proc.returncode == 0, f"{command}\n{proc.stderr[-3000:]}"
    [row] = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert row["id"] == record["id"] and row["imgdiff"]["status"] == "ok", row["imgdiff"]
    # the recipe named in the step is the shipped one, with the Img-Diff thresholds
    run_record = json.loads((tmp_path / ".results.jsonl.run.json").read_text())
    assert json.loads(run_record["params"])["image_text_matching_filter_args"]["min_score"] == 0.4
    assert (tmp_path / "report" / "index.html").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".results.jsonl.run.json", "img", "models", "pairs.jsonl", "report", "results.jsonl"])


def test_a_params_name_that_is_neither_a_file_nor_a_shipped_recipe_is_one_line(tiny_models, tmp_path):
    (tmp_path / "pairs.jsonl").write_text("{}\n")
    proc = subprocess.run([sys.executable, "-m", "imgdiff_onnx", "run", "--models", str(tiny_models), "--input", "pairs.jsonl",
                           "--output", "out.jsonl", "--params", "img_dif"], cwd=tmp_path, capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2 and proc.stderr == "error: --params img_dif: no such file, and not the name of a shipped recipe (img_diff_onnx)\n"


def test_the_tuning_steps_run_as_written_after_the_own_data_steps(tiny_models, tmp_path):
    """README's tuning section as a user follows it: after the own-data steps, in the same folder,
    the two parameter files written as shown, then its commands line by line; `retune` writes what
    `run` would."""
    own = _section("Your own data in three steps")
    _user_folder(tmp_path, _blocks(own, "json")[0], tiny_models)
    section = _section("Tuning thresholds without recomputing")
    files = _blocks(section, "yaml")
    assert [f.splitlines()[0] for f in files] == ["# loose.yaml: every gate open (the crop-pair gate still stops identical crops)",
                                                  "# chosen.yaml: the thresholds picked from the sweep"]  # fmt: skip
    for text in files:
        (tmp_path / text.split(":")[0].removeprefix("# ")).write_text(text + "\n")
    [block] = _blocks(section, "bash")
    commands = [shlex.split(c) for c in _blocks(own, "bash")] + [shlex.split(line, comments=True) for line in block.splitlines()]
    assert [c[:3] for c in commands] == [["python", "-m", "imgdiff_onnx"]] * 6
    for argv in commands:
        proc = subprocess.run([sys.executable, *argv[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"{argv}\n{proc.stderr[-3000:]}"
    fresh = [sys.executable, "-m", "imgdiff_onnx", "run", "--models", "models/", "--input", "pairs.jsonl", "--output", "fresh.jsonl", "--params", "chosen.yaml"]
    subprocess.run(fresh, cwd=tmp_path, check=True, capture_output=True)
    assert (tmp_path / "chosen.jsonl").read_text() == (tmp_path / "fresh.jsonl").read_text()
    assert {p.name for p in (tmp_path / "sweep").iterdir()} == {"sweep.csv", "sweep.md", "sweep.png", "sweep.json", ".imgdiff-onnx-output"}
    assert "Threshold sweep" in (tmp_path / "tuning-report" / "index.html").read_text()
    assert (tmp_path / "report" / "index.html").is_file() and (tmp_path / "results.jsonl").is_file()  # the own-data outputs stay


@pytest.mark.slow  # builds, creates a virtualenv and installs: not for the fast tier
def test_the_package_builds_as_a_wheel_that_installs_and_runs(tmp_path):
    """README's route for a machine without the checkout: `pip wheel`, then install the file (here
    into a virtualenv that borrows the installed dependencies: nothing is downloaded)."""
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(ROOT)],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    [wheel] = (tmp_path / "dist").glob("imgdiff_onnx-*.whl")
    assert wheel.name == "imgdiff_onnx-0.1.0-py3-none-any.whl"  # the name README's install line uses
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--force-reinstall", str(wheel)], check=True,
                   capture_output=True, timeout=600)  # fmt: skip
    check = ("import imgdiff_onnx, pathlib; from imgdiff_onnx.engine.captions import ensure_available; ensure_available(); "
             "print(pathlib.Path(imgdiff_onnx.__file__).parent)")  # fmt: skip
    proc = subprocess.run([str(python), "-c", check], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    installed = Path(proc.stdout.strip())
    assert installed.is_relative_to(venv) and (installed / "recipes" / "img_diff_onnx.yaml").is_file()  # the wheel's, with its data
    assert all((installed / "review" / "page" / name).is_file() for name in ("report.html", "report.css", "report.js"))
    proc = subprocess.run([str(venv / "bin" / "imgdiff-onnx"), "dj-op-path"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and Path(proc.stdout.strip()).is_file() and Path(proc.stdout.strip()).is_relative_to(venv)


def test_the_shard_steps_run_as_written_with_the_run_killed_in_the_middle(tiny_models, tmp_path):
    """README's Parquet/WebDataset block: pack four pairs, run the shards and kill -9 the run as soon
    as it has started writing, resume with the block's own command, and show the results folder."""
    section = _section("Your dataset in Parquet or WebDataset")
    [block] = _blocks(section, "bash")
    commands = [shlex.split(line) for line in block.splitlines()]
    assert [c[3] for c in commands] == ["pack", "run", "run", "show"] and commands[2] == commands[1] + ["--resume"]
    shutil.copytree(tiny_models, tmp_path / "models", ignore=shutil.ignore_patterns("torch"))
    (tmp_path / "img").mkdir()
    with open(tmp_path / "pairs.jsonl", "w", encoding="utf-8") as handle:
        for i in range(4):
            for which, source in ((1, PAIR1), (2, PAIR2)):
                shutil.copy(source, tmp_path / "img" / f"{i}_{which}.jpg")
            handle.write(json.dumps({"id": f"pair{i}", "caption1": "A plane in the sky.", "caption2": "A boat on the sea.",
                                     "image_path1": f"img/{i}_1.jpg", "image_path2": f"img/{i}_2.jpg"}) + "\n")  # fmt: skip

    def run(argv: list[str]) -> None:
        proc = subprocess.run([sys.executable, *argv[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"{argv}\n{proc.stderr[-3000:]}"

    run(commands[0])
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == [".imgdiff-pack", "00000.tar", "00001.tar"]
    started = subprocess.Popen([sys.executable, *commands[1][1:]], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    record = tmp_path / "results" / ".imgdiff-run.json"
    while not record.exists() and started.poll() is None:
        time.sleep(0.005)
    started.kill()  # kill -9, as soon as the models are loaded and the folder is claimed
    assert started.wait() == -signal.SIGKILL
    assert not (tmp_path / "results" / "00001.jsonl").exists()
    run(commands[2])
    rows = [json.loads(line) for name in ("00000.jsonl", "00001.jsonl") for line in (tmp_path / "results" / name).read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"pair{i}" for i in range(4)] and all(r["imgdiff"]["status"] == "ok" for r in rows)
    assert [r["imgdiff"]["source"] for r in rows] == [{"shard": f"0000{i // 2}.tar", "key": f"{i + 1:09d}"} for i in range(4)]
    run(commands[3])
    page = (tmp_path / "report" / "index.html").read_text()
    assert '"id":"pair3"' in page and len(list((tmp_path / "report" / "img").iterdir())) == 4
