"""A long run is safe from its data and from its own commands: every input line gives one strict
JSON result line and the run goes on; no command destroys a file it did not create; one lock per
file, whatever it is called."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from imgdiff_onnx.runs.jsonlines import MAX_DEPTH, MAX_INT_DIGITS, MAX_LINE_BYTES, LineError, RawLine, count_lines, parse_record, read_lines
from imgdiff_onnx.runs.runfile import OutputInUse, OutputLock

from .conftest import DATA

GOOD = {"caption1": "A plane.", "caption2": "A boat.", "image_path1": "a.jpg", "image_path2": "b.jpg", "objects1": ["plane"], "objects2": ["boat"]}
PARAMS = {"image_pair_similarity_filter_args": {"min_score_1": -1, "min_score_2": -1}, "image_segment_mapper_args": {"imgsz": 320},
          "image_text_matching_filter_args": {"min_score": 0}}  # fmt: skip


def _strict(line: bytes) -> dict:
    """What any JSON reader gets: UTF-8, no NaN/Infinity constants."""

    def refuse(name: str) -> None:
        raise AssertionError(f"{name} in a results line")

    return json.loads(line.decode("utf-8"), parse_constant=refuse)


def _raw(data: bytes, number: int = 1) -> RawLine:
    return RawLine(number, data, len(data))


# ---- framing: bytes to records -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'{"a": "\\ud83d"}', "lone UTF-16 surrogate (\\ud83d)"),
        (b'{"\\udc00": 1}', "lone UTF-16 surrogate (\\udc00)"),
        (b'{"a": NaN}', "NaN is not JSON"),
        (b'{"a": -Infinity}', "-Infinity is not JSON"),
        (b'{"a": 1e999}', "too large for a 64-bit float"),
        (b'{"a": ' + b"9" * 5000 + b"}", f"an integer of 5,000 digits (limit {MAX_INT_DIGITS})"),
        (b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", f"nested 100,001 levels deep (limit {MAX_DEPTH})"),
        (b'{"a": "caf\xe9"}', "not UTF-8 (byte 0xe9 at byte 11)"),
        (b"  \t", "empty line"),
        (b"[1, 2]", "expected a JSON object, got an array"),
        (b"null", "expected a JSON object, got null"),
        (b'{"a": 1', "invalid JSON"),
    ],
)
def test_a_hostile_line_is_refused_with_what_is_wrong(data, message):
    with pytest.raises(LineError) as caught:
        parse_record(_raw(data))
    assert message in str(caught.value)


def test_brackets_inside_strings_do_not_count_as_nesting_and_valid_records_parse():
    deep_text = {"a": "[" * 1000, "b": [[["ok"]]], "c": "\U0001f600", "d": 1.5e300, "e": -12345678901234567890}
    assert parse_record(_raw(json.dumps(deep_text).encode())) == deep_text
    assert parse_record(_raw(json.dumps(deep_text, ensure_ascii=False).encode())) == deep_text
    nested = {"a": json.loads("[" * MAX_DEPTH + "]" * MAX_DEPTH)}  # object + MAX_DEPTH arrays: one too deep
    with pytest.raises(LineError, match=f"nested {MAX_DEPTH + 1} levels"):
        parse_record(_raw(json.dumps(nested).encode()))
    assert parse_record(_raw(json.dumps({"a": json.loads("[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1))}).encode()))


def test_lines_split_on_newline_only_one_bom_dropped_and_long_lines_skipped_unheld(tmp_path):
    path = tmp_path / "in.jsonl"
    long = b'{"a": "' + b"x" * 200 + b'"}'
    path.write_bytes(b"\xef\xbb\xbf" + b'{"a": 1,\r"b": 2}\r\n' + b"\xef\xbb\xbf{}\n" + long + b"\n" + b"\n" + b'{"last": true}')
    lines = list(read_lines(path, max_bytes=100))
    assert [ln.number for ln in lines] == [1, 2, 3, 4, 5]
    assert parse_record(lines[0]) == {"a": 1, "b": 2}  # a raw CR is JSON whitespace, and one BOM at file start goes
    with pytest.raises(LineError, match="invalid JSON"):
        parse_record(lines[1])  # a BOM elsewhere is not dropped
    assert lines[2].data is None and lines[2].length == len(long)
    with pytest.raises(LineError, match=f"line of {len(long)} bytes \\(limit 100 bytes\\)"):
        parse_record(lines[2], max_bytes=100)
    assert lines[3].data == b"" and parse_record(lines[4]) == {"last": True}
    assert count_lines(path) == 5
    assert [ln.number for ln in read_lines(path, skip=2, limit=4, max_bytes=100)] == [3, 4]
    # the digest of a skipped long line is the same on every read (a resume compares it)
    assert lines[2].digest == list(read_lines(path, max_bytes=100))[2].digest != list(read_lines(path, max_bytes=50))[1].digest


# ---- the whole run on hostile lines (tiny models) -------------------------------------------------


def _hostile_lines() -> list[bytes]:
    good = json.dumps({**GOOD, "id": "good"}).encode()
    return [
        b'{"id": "surrogate", "caption1": "x \\ud83d", "caption2": "y", "image_path1": "a.jpg", "image_path2": "b.jpg"}',
        json.dumps({**GOOD, "id": "nul", "image_path1": "a\u0000.jpg"}).encode(),
        json.dumps({**GOOD, "id": "long path", "image_path1": "x" * 5000}).encode(),
        json.dumps({**GOOD, "id": "long name", "image_path1": "x" * 300 + ".jpg"}).encode(),
        b'{"id": "deep", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"id": "bigint", "x": ' + b"9" * 5000 + b"}",
        b'{"id": "cr",\r"x": 1, ' + json.dumps(GOOD).encode()[1:],
        b'{"id": "nan", "x": NaN, ' + json.dumps(GOOD).encode()[1:],
        b'{"id": "inf", "x": 1e999, ' + json.dumps(GOOD).encode()[1:],
        b'{"id": "latin-1", "caption1": "caf\xe9"}',
        b'{"id": "huge", "x": "' + b"y" * (MAX_LINE_BYTES + 10) + b'"}',
        json.dumps({**GOOD, "id": "~nobody", "image_path1": "~no_such_user_here/a.jpg"}).encode(),
        json.dumps({**GOOD, "id": "objects", "objects1": "plane"}).encode(),
        good,
    ]


@pytest.fixture()
def hostile(tmp_path) -> Path:
    for name, src in (("a.jpg", "pairs/img_pair_1.jpg"), ("b.jpg", "pairs/img_pair_2.jpg")):
        shutil.copy(DATA / src, tmp_path / name)
    (tmp_path / "params.json").write_text(json.dumps(PARAMS))
    path = tmp_path / "hostile.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({**GOOD, "id": "first"}).encode() + b"\n" + b"\n".join(_hostile_lines()) + b"\n")
    return path


def _run(models: Path, data: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    args = ["run", "--models", str(models), "--input", str(data), "--output", str(out), "--params", str(data.parent / "params.json"),
            "--threads", "1", "--quiet", *extra]  # fmt: skip
    return subprocess.run([sys.executable, "-m", "imgdiff_onnx", *args], capture_output=True, text=True, timeout=900)


def test_every_hostile_line_gives_one_strict_result_line_and_the_run_resumes_past_it(tiny_models, hostile, tmp_path):
    out = tmp_path / "out.jsonl"
    proc = _run(tiny_models, hostile, out)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr
    raw = out.read_bytes().split(b"\n")
    assert raw[-1] == b""
    rows = [_strict(line) for line in raw[:-1]]
    n = count_lines(hostile)
    assert n == 15 and [r["imgdiff"]["line"] for r in rows] == list(range(1, n + 1))
    status = {r.get("id", f"line {r['imgdiff']['line']}"): (r["imgdiff"]["status"], r["imgdiff"].get("error")) for r in rows}
    assert status["first"] == ("ok", None) and status["good"] == ("ok", None)  # a BOM before record 1 is dropped
    assert status["cr"] == ("ok", None)  # a raw CR inside a line does not split it
    assert "lone UTF-16 surrogate" in status["line 2"][1]
    assert status["nul"] == ("error", "image_path1 holds a NUL character, which no file name can")
    assert status["long path"] == ("error", "image_path1 is 5,000 bytes long (limit 4,096)")
    assert status["long name"][0] == "error" and "cannot look up" in status["long name"][1] and "File name too long" in status["long name"][1]
    assert "nested 100,001 levels deep" in status["line 6"][1]
    assert "an integer of 5,000 digits" in status["line 7"][1]
    assert "NaN is not JSON" in status["line 9"][1] and "too large for a 64-bit float" in status["line 10"][1]
    assert "not UTF-8" in status["line 11"][1] and f"(limit {MAX_LINE_BYTES:,} bytes)" in status["line 12"][1]
    assert "home folder of an unknown user" in status["~nobody"][1]
    assert status["objects"] == ("error", "objects1 must be a list of strings, got str")
    if shutil.which("jq") or os.environ.get("CI"):  # another tool reads the file too (CI installs jq)
        jq = subprocess.run(["jq", "-c", ".imgdiff.line"], input=out.read_bytes(), capture_output=True, check=True)
        assert jq.stdout.split() == [str(i).encode() for i in range(1, n + 1)]
    # resumed from a torn middle, the file comes out the same
    full = out.read_bytes()
    for cut in (len(raw[0]) + 5, len(full) // 2):
        out.write_bytes(full[:cut])
        proc = _run(tiny_models, hostile, out, "--resume")
        assert proc.returncode == 0, proc.stderr[-4000:]
        assert out.read_bytes() == full


# ---- no command destroys a file it did not create --------------------------------------------------


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and not p.is_symlink()}


@pytest.mark.parametrize("spelling", ["same", "symlink", "hardlink", "dotdot", "lock-file", "run-record"])
def test_an_output_that_is_the_input_is_refused_before_anything_is_written(tiny_models, hostile, tmp_path, spelling):
    folder = hostile.parent
    if spelling == "same":
        out = hostile
    elif spelling == "symlink":
        out = folder / "link.jsonl"
        out.symlink_to(hostile.name)
    elif spelling == "hardlink":
        out = folder / "hard.jsonl"
        os.link(hostile, out)
    elif spelling == "dotdot":
        out = folder / "nothing" / ".." / hostile.name
    else:  # the input is where the output's lock or run record would go
        out = folder / "out.jsonl"
        name = ".out.jsonl.lock" if spelling == "lock-file" else ".out.jsonl.run.json"
        (folder / name).symlink_to(hostile.name)
    before = _snapshot(folder)
    for extra in ((), ("--overwrite",), ("--resume",)):
        proc = _run(tiny_models, hostile, out, *extra)
        assert proc.returncode == 2 and "is the input file" in proc.stderr and "Traceback" not in proc.stderr
        assert _snapshot(folder) == before


def test_overwrite_replaces_only_a_results_file_of_this_tool(tiny_models, hostile, tmp_path):
    foreign = tmp_path / "notes.jsonl"
    foreign.write_text('{"my": "data"}\n')
    proc = _run(tiny_models, hostile, foreign, "--overwrite")
    assert proc.returncode == 2 and "is not a results file of this tool" in proc.stderr
    assert foreign.read_text() == '{"my": "data"}\n' and not (tmp_path / ".notes.jsonl.run.json").exists()
    ours = tmp_path / "ours.jsonl"
    assert _run(tiny_models, hostile, ours, "--limit", "2").returncode == 0
    (tmp_path / ".ours.jsonl.run.json").unlink()  # its run record lost: its first line still says whose it is
    proc = _run(tiny_models, hostile, ours, "--overwrite", "--limit", "3")
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(line)["imgdiff"]["line"] for line in ours.read_text().splitlines()] == [1, 2, 3]


def test_a_failed_start_leaves_an_overwritten_file_as_it_was(tiny_models, hostile, tmp_path):
    ours = tmp_path / "ours.jsonl"
    assert _run(tiny_models, hostile, ours, "--limit", "2").returncode == 0
    before = _snapshot(tmp_path)
    bad = tmp_path / "bad-models"
    shutil.copytree(tiny_models, bad)
    graph = bad / "clip_vision.int8.onnx"
    data = bytearray(graph.read_bytes())
    data[-1] ^= 0xFF
    graph.write_bytes(bytes(data))
    proc = _run(bad, hostile, ours, "--overwrite", "--model-check", "always")
    assert proc.returncode == 2 and "sha256" in proc.stderr
    assert _snapshot(tmp_path) == before


# ---- one lock per file -----------------------------------------------------------------------------


def test_every_name_of_a_results_file_meets_the_same_lock(tmp_path):
    out = tmp_path / "out.jsonl"
    holder = OutputLock(out).acquire()
    try:
        (tmp_path / "sym.jsonl").symlink_to(out.name)
        os.link(out, tmp_path / "hard.jsonl")
        for name in (tmp_path / "sym.jsonl", tmp_path / "hard.jsonl", tmp_path / "x" / ".." / "out.jsonl", out):
            with pytest.raises(OutputInUse, match="is being written by another run"):
                OutputLock(name).acquire()
        with pytest.raises(OutputInUse, match=f"pid {os.getpid()}"):
            OutputLock(tmp_path / "sym.jsonl").acquire()  # the holder's pid is kept beside the resolved file
    finally:
        holder.release()
    OutputLock(tmp_path / "hard.jsonl").acquire().release()  # released: any name may take it


def test_a_lock_that_created_the_file_removes_it_if_nothing_was_written(tmp_path):
    out = tmp_path / "out.jsonl"
    OutputLock(out).acquire().release()
    assert not out.exists() and not (tmp_path / ".out.jsonl.lock").exists()
    out.write_text("")  # an empty file someone else made stays
    OutputLock(out).acquire().release()
    assert out.exists()


# ---- parameters are values, checked once ----------------------------------------------------------


@pytest.mark.parametrize(
    ("dicts", "message"),
    [
        (({"min_score_1": float("nan")}, None, None), "min_score_1 must be a finite number, got nan"),
        (({"max_score_2": float("inf")}, None, None), "max_score_2 must be a finite number, got inf"),
        (({"min_score_2": True}, None, None), "min_score_2 must be a finite number, got True"),
        (({"min_score_1": "0.5"}, None, None), "min_score_1 must be a finite number, got '0.5'"),
        (({"min_score_1": -1.5}, None, None), "min_score_1 must be in [-1, 1], got -1.5"),
        ((None, None, {"min_score": 1.2}), "min_score must be in [0, 1], got 1.2"),
        ((None, None, {"min_score": 0.6, "max_score": 0.5}), "min_score=0.6 is greater than max_score=0.5"),
        ((None, {"imgsz": 10**9}, None), "imgsz must be an integer from 32 to 4096, got 1000000000"),
        ((None, {"imgsz": 640.5}, None), "imgsz must be an integer from 32 to 4096, got 640.5"),
        ((None, {"imgsz": True}, None), "imgsz must be an integer from 32 to 4096, got True"),
        ((None, {"conf": float("nan")}, None), "conf must be a finite number, got nan"),
        ((None, {"iou": 1.5}, None), "iou must be in [0, 1], got 1.5"),
        ((None, {"model_path": 3}, None), "model_path must be a string, got 3"),
    ],
)
def test_parameters_out_of_their_range_are_refused(dicts, message):
    from imgdiff_onnx.errors import ParameterError
    from imgdiff_onnx.params import OperatorParams

    with pytest.raises(ParameterError) as caught:
        OperatorParams.from_dicts(*dicts)
    assert message in str(caught.value)


def test_parameters_are_compared_by_value():
    from imgdiff_onnx.params import OperatorParams
    from imgdiff_onnx.runs.runfile import RunIdentity, params_text

    ints = OperatorParams.from_dicts({"min_score_1": 0, "max_score_1": 1}, {"imgsz": 640.0}, {"min_score": 0})
    floats = OperatorParams.from_dicts({"min_score_1": 0.0, "max_score_1": 1.0}, {"imgsz": 640}, {"min_score": 0.0})
    assert ints == floats and params_text(ints.to_dicts()) == params_text(floats.to_dicts())
    old = RunIdentity("in", "m", "fp32", json.dumps({"a": {"x": 1}}), False, False)  # as an older version recorded it
    assert old.differences(RunIdentity("in", "m", "fp32", json.dumps({"a": {"x": 1.0}}), False, False)) == []
    assert old.differences(RunIdentity("in", "m", "fp32", json.dumps({"a": {"x": 2}}), False, False)) == ["params"]


def test_a_precision_in_the_params_file_is_honoured_and_the_command_line_wins(tiny_models, hostile, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    op = {**PARAMS, "precision": "fp32", "threads": 1, "model_dir": "models"}
    recipe.write_text(json.dumps({"process": [{"imgdiff_difference_area_generator_onnx_mapper": op}]}))  # JSON is YAML
    args = ["--limit", "1"]
    out = tmp_path / "from-recipe.jsonl"
    proc = _run(tiny_models, hostile, out, *args, "--params", str(recipe))
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / ".from-recipe.jsonl.run.json").read_text())["precision"] == "fp32"
    out = tmp_path / "given.jsonl"
    proc = _run(tiny_models, hostile, out, *args, "--params", str(recipe), "--precision", "int8")
    assert proc.returncode == 0 and "--precision int8 replaces the precision fp32 of --params" in proc.stderr
    assert json.loads((tmp_path / ".given.jsonl.run.json").read_text())["precision"] == "int8"
    proc = _run(tiny_models, hostile, tmp_path / "twice.jsonl", *args, "--precision", "clip=int8,clip=fp32")
    assert proc.returncode == 2 and "names clip twice" in proc.stderr and not (tmp_path / "twice.jsonl").exists()


def test_a_resume_is_not_refused_for_how_a_number_is_written(tiny_models, hostile, tmp_path):
    out = tmp_path / "out.jsonl"
    assert _run(tiny_models, hostile, out, "--limit", "2").returncode == 0
    spelled = {**PARAMS, "image_segment_mapper_args": {"imgsz": 320.0}, "image_text_matching_filter_args": {"min_score": 0.0}}
    (hostile.parent / "params.json").write_text(json.dumps(spelled))
    proc = _run(tiny_models, hostile, out, "--resume", "--limit", "3")
    assert proc.returncode == 0, proc.stderr
    assert len(out.read_text().splitlines()) == 3


# ---- output folders: show, validate and demo write only where nothing of the user's is lost --------


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "imgdiff_onnx", *args], capture_output=True, text=True, timeout=900)


def test_show_into_a_folder_of_the_users_files_is_refused_and_removes_nothing(tiny_models, hostile, tmp_path):
    results = tmp_path / "results.jsonl"
    assert _run(tiny_models, hostile, results, "--limit", "2").returncode == 0
    photos = tmp_path / "data"
    (photos / "img").mkdir(parents=True)
    shutil.copy(hostile.parent / "a.jpg", photos / "img" / "0000001.jpg")  # named like a report picture, in someone's folder
    shutil.copy(hostile.parent / "b.jpg", photos / "img" / "holiday.jpg")
    before = {p.name: p.read_bytes() for p in (photos / "img").iterdir()}
    proc = _cli("show", "--input", str(results), "--out", str(photos), "--quiet")
    assert proc.returncode == 2 and "holds files this tool did not write (img)" in proc.stderr
    assert {p.name: p.read_bytes() for p in (photos / "img").iterdir()} == before and not (photos / "index.html").exists()
    report = tmp_path / "report"
    for _ in range(2):  # a report folder is its own to rewrite
        proc = _cli("show", "--input", str(results), "--out", str(report), "--quiet")
        assert proc.returncode == 0, proc.stderr
    page = (report / "index.html").read_bytes()
    (report / "index.html").write_text("my notes")  # a page of ours the user wrote over: theirs now
    proc = _cli("show", "--input", str(results), "--out", str(report), "--quiet")
    assert proc.returncode == 2 and "(index.html (changed since it was written))" in proc.stderr
    assert (report / "index.html").read_text() == "my notes"
    (report / "index.html").write_bytes(page)
    (report / "img" / "holiday.jpg").write_bytes(b"x")  # a picture of the user's among the report's
    proc = _cli("show", "--input", str(results), "--out", str(report), "--quiet")
    assert proc.returncode == 2 and "(img/holiday.jpg)" in proc.stderr and (report / "img" / "holiday.jpg").exists()
    only_theirs = tmp_path / "site"
    only_theirs.mkdir()
    (only_theirs / "index.html").write_text("my home page")  # named as a report's page, but not written by this tool
    proc = _cli("show", "--input", str(results), "--out", str(only_theirs), "--quiet")
    assert proc.returncode == 2 and "holds files this tool did not write (index.html)" in proc.stderr
    assert (only_theirs / "index.html").read_text() == "my home page"


def test_validate_and_demo_refuse_a_folder_of_other_files_before_any_work(tiny_models, hostile, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "validation.md").write_text("my notes")
    (mine / "thesis.tex").write_text("precious")
    proc = _cli("validate", "--models", str(tiny_models), "--input", str(hostile), "--out", str(mine), "--quiet")
    assert proc.returncode == 2 and "holds files this tool did not write (thesis.tex, validation.md)" in proc.stderr  # named as ours, but theirs
    proc = _cli("demo", "--models", str(tiny_models), "--out", str(mine), "--quiet")
    assert proc.returncode == 2 and "holds files this tool did not write (thesis.tex, validation.md)" in proc.stderr
    assert sorted(p.name for p in mine.iterdir()) == ["thesis.tex", "validation.md"] and (mine / "validation.md").read_text() == "my notes"
    (mine / "thesis.tex").unlink()
    proc = _cli("validate", "--models", str(tiny_models), "--input", str(hostile), "--out", str(mine), "--quiet")
    assert proc.returncode == 2 and "holds files this tool did not write (validation.md)" in proc.stderr  # named like ours, but the user's
    demo = tmp_path / "demo"
    demo.mkdir()
    (demo / "pairs.jsonl").write_text("my pairs")
    proc = _cli("demo", "--models", str(tiny_models), "--out", str(demo), "--quiet")
    assert proc.returncode == 2 and "holds files this tool did not write (pairs.jsonl)" in proc.stderr
    assert (demo / "pairs.jsonl").read_text() == "my pairs"


# ---- the framing invariants end to end, on the tiny models (a few examples) ------------------------


@pytest.fixture(scope="module")
def tiny_engine(tiny_models):
    from imgdiff_onnx import DifferenceAreaGenerator, EngineSettings, OperatorParams

    engine = DifferenceAreaGenerator(tiny_models, OperatorParams.from_mapping(PARAMS), EngineSettings(threads=1))
    yield engine
    engine.close()


def test_hostile_lines_around_real_records_keep_the_invariants_end_to_end(tiny_engine):
    import tempfile

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from imgdiff_onnx.runs.jsonl import RunOptions, run

    from .conftest import PAIR1, PAIR2

    real = json.dumps({"image_path1": str(PAIR1), "image_path2": str(PAIR2), "objects1": ["plane"], "objects2": ["boat"]}).encode()
    hostile = st.one_of(st.sampled_from(_hostile_lines()[:10]), st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")))
    body = st.lists(st.one_of(st.just(real), hostile), min_size=1, max_size=5)

    @settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
    @given(lines=body, cut=st.floats(min_value=0, max_value=1))
    def check(lines, cut):
        with tempfile.TemporaryDirectory() as tmp:
            data, out = Path(tmp) / "in.jsonl", Path(tmp) / "out.jsonl"
            data.write_bytes(b"\n".join(lines) + b"\n")
            run(tiny_engine, data, out, RunOptions(progress=False, pairs_per_batch=2))
            written = out.read_bytes()
            rows = [_strict(line) for line in written.split(b"\n")[:-1]]
            assert [r["imgdiff"]["line"] for r in rows] == list(range(1, len(lines) + 1))
            assert all((r["imgdiff"]["status"] == "ok") == (line == real) for r, line in zip(rows, lines))
            out.write_bytes(written[: int(cut * len(written))])
            run(tiny_engine, data, out, RunOptions(progress=False, pairs_per_batch=2, resume=True))
            assert out.read_bytes() == written

    check()
