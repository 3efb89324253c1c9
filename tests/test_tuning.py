"""Kept scores, retune and sweep: a loose run with kept scores, decided again at other thresholds,
equals a fresh run at those thresholds byte for byte; what cannot be retuned is refused; the
kept scores survive resume and are dropped with the file they belong to."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imgdiff_onnx import DifferenceAreaGenerator, EngineSettings, OperatorParams
from imgdiff_onnx.errors import ParameterError, RunError
from imgdiff_onnx.runs.jsonl import RunOptions, run
from imgdiff_onnx.engine.modelset import ModelSet, SessionPool
from imgdiff_onnx.engine.stages.matching import first_matching_words
from imgdiff_onnx.tuning import KeptRun, retune_file
from imgdiff_onnx.engine.decide import _first_matches, _Tally
from imgdiff_onnx.engine.precision import Precision
from imgdiff_onnx.tuning.retune import RetuneOptions
from imgdiff_onnx.pairs import ScoreSheet
from imgdiff_onnx.runs.scores import pack, scores_folder, unpack
from imgdiff_onnx.tuning.sweep import SweepOptions, parse_axis, sweep_file

from .conftest import DATA, PAIR1, PAIR_CAPTIONS

# the suite runs on pytest-xdist workers: this file's tests stay on one worker, where they share
# module fixtures that take seconds to compute
pytestmark = pytest.mark.xdist_group("tuning")


def _params(s1=(-1.0, 1.0), s2=(-1.0, 1.0), itm=(0.0, 1.0), **segment) -> OperatorParams:
    return OperatorParams.from_dicts({"min_score_1": s1[0], "max_score_1": s1[1], "min_score_2": s2[0], "max_score_2": s2[1]},
                                     {"imgsz": 320, **segment}, {"min_score": itm[0], "max_score": itm[1]})  # fmt: skip


def _write_params(path: Path, params: OperatorParams) -> Path:
    data = params.to_dicts()
    for group in data.values():
        group.pop("hf_clip", None), group.pop("hf_blip", None), group.pop("model_path", None)
    path.write_text(json.dumps(data))
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """Pairs whose windows and words exercise every gate: a real pair, two photos with a repeated
    word, a pasted patch (most windows the same pixels), a pair without object words, a bad image."""
    folder = tmp_path_factory.mktemp("tuning")
    one = cv2.imread(str(PAIR1))
    two = one.copy()
    h, w = one.shape[:2]
    two[h // 3 : h // 3 + h // 4, w // 3 : w // 3 + w // 4] = cv2.resize(cv2.imread(str(DATA / "images" / "cat.jpg")), (w // 4, h // 4))
    cv2.imwrite(str(folder / "pasted_1.png"), one)
    cv2.imwrite(str(folder / "pasted_2.png"), two)
    records = [
        {"id": "real", "image_path1": str(PAIR1), "image_path2": str(DATA / "pairs" / "img_pair_2.jpg"), "caption1": PAIR_CAPTIONS[0], "caption2": PAIR_CAPTIONS[1]},
        {"id": "photos", "image_path1": str(DATA / "images" / "cat.jpg"), "image_path2": str(DATA / "images" / "lena.jpg"),
         "objects1": ["cat"], "objects2": ["woman", "hat", "woman"]},
        {"id": "pasted", "image_path1": "pasted_1.png", "image_path2": "pasted_2.png", "objects1": ["plane", "sky"], "objects2": ["cat", "plane"]},
        {"id": "no words", "image_path1": str(DATA / "images" / "cat.jpg"), "image_path2": str(DATA / "images" / "lena.jpg"), "caption1": "A cat.", "caption2": "A cat."},
        {"id": "bad", "image_path1": "missing.png", "image_path2": "pasted_2.png", "objects1": ["cat"], "objects2": ["dog"]},
    ]  # fmt: skip
    (folder / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


@pytest.fixture(scope="module")
def model_sets(tiny_models):
    pool = SessionPool()
    return {name: ModelSet(tiny_models, precision, pool=pool) for name, precision in (("banded", None), ("int8", "int8"))}


def _run(models: ModelSet, work: Path, params: OperatorParams, out: Path, keep: bool = False, limit: int | None = None, resume: bool = False) -> Path:
    engine = DifferenceAreaGenerator(models, params, EngineSettings(threads=1, workers=1, keep_scores=keep))
    run(engine, work / "pairs.jsonl", out, RunOptions(overwrite=not resume, resume=resume, limit=limit, progress=False, pairs_per_batch=2))
    return out


@pytest.fixture(scope="module")
def kept(model_sets, work) -> dict[str, Path]:
    """A loose (every gate open) run with kept scores, per precision."""
    return {name: _run(models, work, _params(), work / f"kept-{name}.jsonl", keep=True) for name, models in model_sets.items()}


def _retune(results: Path, params: OperatorParams, out: Path) -> Path:
    retune_file(results, params, out, RetuneOptions(overwrite=True, progress=False))
    return out


def test_a_kept_scores_run_writes_what_the_gated_run_writes(model_sets, work, kept):
    gated = _run(model_sets["banded"], work, _params(), work / "gated.jsonl")
    assert kept["banded"].read_bytes() == gated.read_bytes()
    folder = scores_folder(kept["banded"])
    assert sorted(p.name for p in folder.iterdir()) == ["line-000000001.npz", "line-000000003.npz", "meta.json"]  # batches of 2; the last has none
    with_scores = [sheet is not None for _, sheet in KeptRun.open(kept["banded"]).lines()]
    assert with_scores == [True, True, True, False, False]  # no object words, a bad image: nothing to keep


@pytest.mark.parametrize("precision", ["banded", "int8"])
def test_retune_to_stricter_thresholds_equals_a_fresh_run(model_sets, work, kept, precision):
    strict = _params(s1=(0.5, 0.99), s2=(0.6, 0.97), itm=(0.3, 0.9))
    fresh = _run(model_sets[precision], work, strict, work / f"fresh-{precision}.jsonl")
    retuned = _retune(kept[precision], strict, work / f"retuned-{precision}.jsonl")
    assert retuned.read_bytes() == fresh.read_bytes()
    assert retuned.read_bytes() != kept[precision].read_bytes()  # the thresholds changed the boxes
    run_record = json.loads((work / f".fresh-{precision}.jsonl.run.json").read_text())
    assert json.loads((work / f".retuned-{precision}.jsonl.run.json").read_text()) == run_record


THRESHOLD = st.floats(0.0, 1.0).map(lambda v: round(v, 3))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(s1=st.tuples(THRESHOLD, THRESHOLD).map(sorted), s2=st.tuples(THRESHOLD, THRESHOLD).map(lambda t: sorted(0.5 + v / 2 for v in t)),
       itm=st.tuples(THRESHOLD, THRESHOLD).map(sorted))  # fmt: skip
def test_retune_equals_a_fresh_run_at_any_thresholds(model_sets, work, kept, s1, s2, itm):
    """Banded (the default): the scores in the new guard band are computed in fp32, as the fresh run does."""
    params = _params(tuple(s1), tuple(s2), tuple(itm))
    fresh = _run(model_sets["banded"], work, params, work / "fresh-any.jsonl")
    assert _retune(kept["banded"], params, work / "retuned-any.jsonl").read_bytes() == fresh.read_bytes()


def test_what_chose_the_candidates_cannot_be_retuned(kept, work):
    with pytest.raises(ParameterError, match=r"image_segment_mapper_args\.conf: 0\.2 asked, the kept scores are for 0\.05"):
        _retune(kept["banded"], _params(conf=0.2), work / "refused.jsonl")
    assert not (work / "refused.jsonl").exists()
    params = _write_params(work / "imgsz.json", _params(imgsz=640))
    proc = subprocess.run([sys.executable, "-m", "imgdiff_onnx", "retune", "--input", str(kept["banded"]), "--params", str(params),
                           "--output", str(work / "refused.jsonl")], capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "image_segment_mapper_args.imgsz: 640 asked" in proc.stderr


def test_retune_takes_a_params_files_precision_only_when_it_is_the_runs(kept, work, tmp_path):
    data = _params(s2=(0.6, 0.97)).to_dicts()
    for group in data.values():
        group.pop("hf_clip", None), group.pop("hf_blip", None), group.pop("model_path", None)
    for precision, ok in (("fp32", False), ("int8", True), ("clip=int8,blip=int8,fastsam=int8", True), ("fastsam=fp32,clip=int8,blip=int8", False)):
        (tmp_path / "p.json").write_text(json.dumps({**data, "precision": precision}))
        proc = subprocess.run([sys.executable, "-m", "imgdiff_onnx", "retune", "--input", str(kept["int8"]), "--params", str(tmp_path / "p.json"),
                               "--output", str(tmp_path / f"{ok}.jsonl"), "--overwrite", "--quiet"], capture_output=True, text=True)  # fmt: skip
        if ok:
            assert proc.returncode == 0, proc.stderr
        else:
            assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and f"precision: {Precision.parse(precision)} asked (--params), the kept scores were computed at int8" in proc.stderr
            assert not (tmp_path / f"{ok}.jsonl").exists()


def test_a_hand_edited_scores_record_and_a_300_digit_threshold_are_one_line(kept, work, tmp_path):
    copy = tmp_path / "kept.jsonl"
    shutil.copy(kept["int8"], copy)
    shutil.copytree(scores_folder(kept["int8"]), scores_folder(copy))
    meta = scores_folder(copy) / "meta.json"
    data = json.loads(meta.read_text())
    data["margins"] = {"crop_similarity": "0.1"}  # margins as strings
    meta.write_text(json.dumps(data))
    with pytest.raises(RunError, match=r"meta.json: not the record of kept scores this version reads \(margins must map score names to finite numbers >= 0\)"):
        KeptRun.open(copy)
    huge = tmp_path / "huge.json"
    huge.write_text('{"image_text_matching_filter_args": {"min_score": 1' + "0" * 300 + "}}")
    for command in (["retune", "--input", str(kept["int8"]), "--output", str(tmp_path / "out.jsonl")],
                    ["run", "--models", "no-models", "--input", str(work / "pairs.jsonl"), "--output", str(tmp_path / "run.jsonl")]):  # fmt: skip
        proc = subprocess.run([sys.executable, "-m", "imgdiff_onnx", *command, "--params", str(huge), "--quiet"], capture_output=True, text=True)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "an integer of 301 digits (limit 100)" in proc.stderr, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["huge.json", "kept.jsonl", "kept.jsonl.scores"]


def test_kept_scores_resume_with_the_run_and_are_refused_when_the_file_changed(model_sets, work, kept):
    out = work / "resumed.jsonl"
    _run(model_sets["banded"], work, _params(), out, keep=True, limit=3)
    with pytest.raises(RunError, match=r"other settings: keep_scores \(true before, false now\)"):
        _run(model_sets["banded"], work, _params(), out, resume=True)
    _run(model_sets["banded"], work, _params(), out, keep=True, resume=True)
    assert out.read_bytes() == kept["banded"].read_bytes()
    strict = _params(s2=(0.7, 0.95))
    assert _retune(out, strict, work / "a.jsonl").read_bytes() == _retune(kept["banded"], strict, work / "b.jsonl").read_bytes()
    lines = out.read_text().splitlines()
    first = json.loads(lines[0])
    first["imgdiff"]["input_digest"] = "0" * 16
    out.write_text("\n".join([json.dumps(first)] + lines[1:]) + "\n")
    with pytest.raises(RunError, match="kept scores of line 1 are of another input line"):
        _retune(out, strict, work / "c.jsonl")


def test_overwriting_without_kept_scores_drops_the_old_ones(model_sets, work):
    out = work / "dropped.jsonl"
    _run(model_sets["int8"], work, _params(), out, keep=True, limit=1)
    assert scores_folder(out).is_dir()
    _run(model_sets["int8"], work, _params(), out, limit=1)
    assert not scores_folder(out).exists()
    with pytest.raises(RunError, match="no kept scores"):
        _retune(out, _params(), work / "none.jsonl")


def test_a_retune_that_fails_half_way_leaves_the_earlier_output_as_it_was(kept, tmp_path):
    """retune --overwrite with a --models folder that is missing: the fp32 re-score the new
    thresholds need fails after lines were decided; the earlier results and run record stay."""
    crops = np.concatenate([sheet.crop[:, 0] for _, sheet in KeptRun.open(kept["banded"]).lines() if sheet is not None and len(sheet.crop)])
    needs_fp32 = _params(s2=(-1.0, float(np.median(crops))))
    output = tmp_path / "out.jsonl"
    _retune(kept["banded"], _params(), output)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(RunError, match="retune needs fp32 scores near the new thresholds.*pass --models"):
        retune_file(kept["banded"], needs_fp32, output, RetuneOptions(overwrite=True, progress=False, models=tmp_path / "moved"))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_the_scores_folder_loses_only_what_a_run_wrote_there(model_sets, work):
    out = work / "sidecar.jsonl"
    _run(model_sets["int8"], work, _params(), out, keep=True, limit=2)
    folder = scores_folder(out)
    (folder / "notes.tmp").write_text("mine")  # a user's files among the kept scores
    (folder / "mine.txt").write_text("mine")
    (folder / "line-000000009.npz.tmp").write_bytes(b"half")  # a chunk a crash left half-written: the run's own
    _run(model_sets["int8"], work, _params(), out, keep=True)  # an overwrite that keeps scores again
    assert sorted(p.name for p in folder.iterdir()) == ["line-000000001.npz", "line-000000003.npz", "meta.json", "mine.txt", "notes.tmp"]
    _run(model_sets["int8"], work, _params(), out)  # an overwrite without: the run's scores go, the user's files stay
    assert sorted(p.name for p in folder.iterdir()) == ["mine.txt", "notes.tmp"]


def test_the_api_decides_in_a_notebook(kept):
    run_ = KeptRun.open(kept["int8"])
    results = [result for _, result in run_.decide(_params(s2=(0.9, 0.95)))]
    assert [r is None for r in results] == [False, False, False, True, True]  # no words, bad image: as they were
    assert all(len(r.boxes) == len(r.evidence) and all(0.9 <= e.crop_similarity <= 0.95 for e in r.evidence) for r in results if r is not None)


def test_sweep_writes_its_table_plot_and_report_section(kept, work):
    paths = sweep_file(kept["int8"], [parse_axis("max_score_2=0.8:1.0:0.1"), parse_axis("min_score=0,0.5")], work / "sweep")
    rows = json.loads(paths["json"].read_text())["rows"]
    assert [(r["max_score_2"], r["min_score"]) for r in rows] == [(0.8, 0.0), (0.8, 0.5), (0.9, 0.0), (0.9, 0.5), (1.0, 0.0), (1.0, 0.5)]
    own = rows[4]  # the run's own thresholds: the counts of its results file
    results = [json.loads(line)["imgdiff"] for line in kept["int8"].read_text().splitlines()]
    assert own["boxes"] == sum(len(r["boxes"]) for r in results)
    assert own["pairs_with_boxes"] == sum(bool(r["boxes"]) for r in results)
    kinds = ["error" if r["status"] == "error" else "no_objects" if r["exit_reason"] else "has_boxes" if r["boxes"] else "no_box_left" for r in results]
    assert own["exits"] == {kind: kinds.count(kind) for kind in set(kinds)}
    assert kinds.count("error") == 1 and kinds.count("no_objects") == 1
    assert rows[0]["boxes"] <= rows[2]["boxes"] <= rows[4]["boxes"]
    assert paths["csv"].read_text().splitlines()[0].startswith("max_score_2,min_score,pairs,pairs_with_boxes")
    assert cv2.imread(str(paths["plot"])).shape == (520, 900, 3)
    proc = subprocess.run([sys.executable, "-m", "imgdiff_onnx", "show", "--input", str(kept["int8"]), "--out", str(work / "report"),
                           "--sweep", str(work / "sweep"), "--quiet"], capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    page = (work / "report" / "index.html").read_text()
    assert "Threshold sweep: max_score_2 x min_score" in page and "data:image/png;base64," in page


def test_a_sweep_writes_only_into_a_folder_of_its_own(kept, work, tmp_path):
    axes = [parse_axis("max_score_2=0.8:1.0:0.1")]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "sweep.csv").write_text("my table")
    with pytest.raises(RunError, match=r"holds files this tool did not write \(sweep.csv\)"):
        sweep_file(kept["int8"], axes, mine)
    assert [p.name for p in mine.iterdir()] == ["sweep.csv"] and (mine / "sweep.csv").read_text() == "my table"
    (tmp_path / "file").write_text("x")
    for out, message in ((tmp_path / "file", "is a file; give a folder"), (tmp_path / "file" / "under", "is a file, so the folder cannot go there")):
        proc = subprocess.run([sys.executable, "-m", "imgdiff_onnx", "sweep", "--input", str(kept["int8"]), "--vary", "min_score=0:1:0.5",
                               "--out", str(out), "--quiet"], capture_output=True, text=True)  # fmt: skip
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr
    ours = tmp_path / "ours"
    sweep_file(kept["int8"], axes, ours)
    sweep_file(kept["int8"], [parse_axis("min_score=0,0.5")], ours)  # its own folder: written again
    assert json.loads((ours / "sweep.json").read_text())["axes"] == ["min_score"]


def test_a_sweep_refuses_what_it_cannot_vary():
    with pytest.raises(ParameterError, match="conf: not a threshold a sweep can change"):
        parse_axis("conf=0.1:0.5:0.1")
    with pytest.raises(ParameterError, match="STEP must be > 0"):
        parse_axis("max_score_2=1:0.5:0.1")
    for text in ("min_score=0:inf:0.1", "min_score=0:1:nan", "min_score=0,inf"):
        with pytest.raises(ParameterError, match="must be a finite number"):
            parse_axis(text)
    with pytest.raises(ParameterError, match="1e\\+300 values; at most 2,500"):
        parse_axis("min_score=0:1:1e-300")
    with pytest.raises(ParameterError, match="5,000 values; at most 2,500"):
        parse_axis("min_score=" + ",".join(["0.5"] * 5000))
    big = [parse_axis("min_score=0:0.2499:0.0001"), parse_axis("max_score=0.5:0.7499:0.0001")]  # 2,500 x 2,500
    with pytest.raises(ParameterError, match="6,250,000 settings"):  # refused from the sizes, before the results are read
        sweep_file(Path("no-such-results.jsonl"), big, Path("no-such-folder"))


# ---- the sheet's format and the first-word decision, over many inputs ------------------------------

finite = st.floats(-1.0, 1.0, allow_nan=False)


@st.composite
def sheets(draw) -> ScoreSheet:
    n_windows = draw(st.integers(0, 6))
    n_candidates = draw(st.integers(n_windows, n_windows + 3)) if n_windows else 0
    n1, n2 = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    window_of = np.concatenate([np.arange(n_windows), rng.integers(0, max(n_windows, 1), n_candidates - n_windows)]).astype(np.int32)

    def scores(*shape: int) -> np.ndarray:
        out = rng.uniform(-1, 1, (*shape, 2))
        out[..., 1][rng.random(shape) < 0.7] = np.nan
        return out

    return ScoreSheet(scores(1)[0], draw(st.booleans()), rng.uniform(0, 500, (n_candidates, 4)).astype(np.float32),
                      draw(st.integers(0, n_candidates)), window_of, rng.random(n_windows) < 0.8, rng.random(n_windows) < 0.3,
                      scores(n_windows), scores(n_windows, n1), scores(n_windows, n2))  # fmt: skip


@given(st.lists(sheets(), min_size=1, max_size=4))
def test_sheets_read_back_exactly(batch):
    lines = list(range(7, 7 + len(batch)))
    back = list(unpack(pack(lines, [f"{n:016x}" for n in lines], batch)))
    assert [(line, digest) for line, digest, _ in back] == [(n, f"{n:016x}") for n in lines]
    for (_, _, got), want in zip(back, batch):
        for name in ScoreSheet.__dataclass_fields__:
            a, b = getattr(got, name), getattr(want, name)
            assert np.array_equal(a, b, equal_nan=True) if isinstance(b, np.ndarray) else a == b, name


@given(st.data())
def test_the_vectorised_first_word_is_the_engines_first_word(data):
    """engine.decide's first matching word per window equals stages.matching.first_matching_words,
    word for word and score for score (a repeated word has its first score everywhere)."""
    words = data.draw(st.lists(st.sampled_from("abc"), min_size=1, max_size=4))
    n_windows = data.draw(st.integers(1, 5))
    score = {(k, w): data.draw(finite) for k in range(n_windows) for w in set(words)}
    lo, hi = sorted(data.draw(st.tuples(finite, finite)))
    reach = np.array(data.draw(st.lists(st.booleans(), min_size=n_windows, max_size=n_windows)))
    itm = np.full((n_windows, len(words), 2), np.nan)
    itm[..., 0] = [[score[(k, w)] for w in words] for k in range(n_windows)]
    reached = [k for k in range(n_windows) if reach[k]]
    found = first_matching_words([words] * len(reached), lambda w, idx: np.array([score[(reached[i], w)] for i in idx]), lo, hi)
    passes, chosen, probability = _first_matches(itm, words, reach, lo, hi, None, 1, _Tally())
    got = [(words[chosen[k]], float(probability[k])) if passes[k] else None for k in reached]
    assert got == found
    assert not passes[~reach].any()


BLOCK_ENGINE = """
import importlib.abc, runpy, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("onnxruntime", "torch", "transformers", "ultralytics"):
            raise ImportError("no " + name + " on this host")
sys.meta_path.insert(0, Block())
sys.argv = ["imgdiff_onnx"] + sys.argv[1:]
runpy.run_module("imgdiff_onnx", run_name="__main__", alter_sys=True)
"""


def test_show_sweep_and_a_model_free_retune_need_no_onnxruntime(kept, work):
    """Reviewing and tuning happen where the results are, which need not have the engine."""
    strict = _write_params(work / "strict-int8.json", _params(s2=(0.6, 0.95), itm=(0.2, 1.0)))
    commands = [
        ["show", "--input", str(kept["int8"]), "--out", str(work / "report-no-ort")],
        ["sweep", "--input", str(kept["int8"]), "--vary", "min_score=0:1:0.5", "--out", str(work / "sweep-no-ort")],
        ["retune", "--input", str(kept["int8"]), "--params", str(strict), "--output", str(work / "retuned-no-ort.jsonl")],
    ]
    for args in commands:
        proc = subprocess.run([sys.executable, "-c", BLOCK_ENGINE, *args, "--quiet"], capture_output=True, text=True)
        assert proc.returncode == 0, f"{args[0]}: {proc.stderr[-2000:]}"
    expected = _retune(kept["int8"], OperatorParams.from_mapping(json.loads(strict.read_text())), work / "retuned-here.jsonl")
    assert (work / "retuned-no-ort.jsonl").read_bytes() == expected.read_bytes()


# ---- a shard run's folder: kept scores per shard, retune and sweep of the folder -------------------------------------


@pytest.fixture(scope="module")
def shards(work) -> Path:
    """The work pairs packed into WebDataset shards of two pairs (the bad record is left out by pack)."""
    from imgdiff_onnx.runs.pack import PackOptions, pack

    pack(work / "pairs.jsonl", work / "shards", PackOptions("webdataset", 2, progress=False))
    return work / "shards"


def _run_shards(models: ModelSet, shards: Path, params: OperatorParams, out: Path, keep: bool = False, output_format: str = "jsonl") -> Path:
    from imgdiff_onnx.runs.shard_run import ShardOptions, run_shards

    engine = DifferenceAreaGenerator(models, params, EngineSettings(threads=1, workers=1, keep_scores=keep))
    run_shards(engine, str(shards), out, RunOptions(overwrite=True, progress=False, pairs_per_batch=1), ShardOptions(output_format=output_format))
    return out


def _folder_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")}


@pytest.mark.parametrize("precision, output_format", [("banded", "jsonl"), ("int8", "parquet")])
def test_retune_of_a_shard_runs_folder_equals_a_fresh_shard_run(model_sets, shards, work, precision, output_format):
    """Kept scores per shard; retune of the folder writes the fresh shard run's files and record.
    Banded: the threshold sits on a kept int8 crop score, so the fp32 re-score reads the image bytes
    again from the shards."""
    kept = _run_shards(model_sets[precision], shards, _params(), work / f"kept-{precision}-{output_format}", keep=True, output_format=output_format)
    suffix = "." + output_format
    assert sorted(p.name for p in kept.iterdir() if p.is_dir()) == [f"{n:05d}{suffix}.scores" for n in range(2)]
    runs = KeptRun.open_all(kept)
    assert [r.shard for r in runs] == ["00000.tar", "00001.tar"]
    crops = np.concatenate([sheet.crop[:, 0] for run_ in runs for _, sheet in run_.lines() if sheet is not None and len(sheet.crop)])
    strict = _params(s2=(-1.0, float(np.median(crops))), itm=(0.2, 1.0))
    counts = retune_file(kept, strict, work / f"retuned-{precision}-{output_format}", RetuneOptions(overwrite=True, progress=False))
    fresh = _run_shards(model_sets[precision], shards, strict, work / f"fresh-{precision}-{output_format}", output_format=output_format)
    retuned = work / f"retuned-{precision}-{output_format}"
    assert _folder_files(retuned) == _folder_files(fresh) and len(_folder_files(fresh)) == 2
    assert _folder_files(retuned) != _folder_files(kept)  # the thresholds changed the boxes
    record = json.loads((retuned / ".imgdiff-run.json").read_text())
    assert record == json.loads((fresh / ".imgdiff-run.json").read_text())
    assert counts["lines"] == 4 and counts["changed"] > 0
    assert (counts["rescored"] > 0) == (precision == "banded")


def test_a_retuned_folder_is_refused_without_overwrite_and_resumes_as_a_run(model_sets, shards, work):
    kept = _run_shards(model_sets["int8"], shards, _params(), work / "kept-folder", keep=True)
    out = work / "retuned-folder"
    strict = _params(s2=(0.6, 0.97))
    retune_file(kept, strict, out, RetuneOptions(progress=False))
    with pytest.raises(RunError, match="holds the results of a run; pass --overwrite"):
        retune_file(kept, strict, out, RetuneOptions(progress=False))
    with pytest.raises(RunError, match="would hold or be inside the results folder"):
        retune_file(kept, strict, kept / "inner", RetuneOptions(progress=False))
    # the retuned folder is a run's folder at the new thresholds: a resume finds every shard committed
    (out / "00001.jsonl").unlink()
    before = (out / "00000.jsonl").read_bytes()
    engine = DifferenceAreaGenerator(model_sets["int8"], strict, EngineSettings(threads=1, workers=1))
    from imgdiff_onnx.runs.shard_run import ShardOptions, run_shards

    stats = run_shards(engine, str(shards), out, RunOptions(resume=True, progress=False), ShardOptions())
    assert stats["ok"] == 2 and (out / "00000.jsonl").read_bytes() == before
    assert _folder_files(out) == _folder_files(_run_shards(model_sets["int8"], shards, strict, work / "fresh-folder"))
    plain = _run_shards(model_sets["int8"], shards, _params(), work / "plain-folder")
    with pytest.raises(RunError, match="without --keep-scores"):
        retune_file(plain, strict, work / "never", RetuneOptions(progress=False))
    assert not (work / "never").exists()


def test_sweep_of_a_shard_runs_folder_counts_every_shards_pairs(model_sets, shards, work, kept):
    folder = _run_shards(model_sets["int8"], shards, _params(), work / "kept-sweep", keep=True)
    axes = [parse_axis("max_score_2=0.8:1.0:0.1")]
    of_folder = json.loads(sweep_file(folder, axes, work / "sweep-folder")["json"].read_text())["rows"]
    of_file = json.loads(sweep_file(kept["int8"], axes, work / "sweep-file")["json"].read_text())["rows"]
    for a, b in zip(of_folder, of_file):  # the same pairs, but the record pack left out (an error line in the file)
        assert (a["boxes"], a["pairs_with_boxes"], a["pairs"] + 1) == (b["boxes"], b["pairs_with_boxes"], b["pairs"])
    proc = subprocess.run([sys.executable, "-m", "imgdiff_onnx", "sweep", "--input", str(folder), "--vary", "min_score=0:1:0.5",
                           "--out", str(work / "sweep-cli")], capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and "| min_score |" not in proc.stderr  # where the files are and the best settings, not the table
    assert "sweep of 3 settings written to" in proc.stderr and "the settings with the most pairs with boxes" in proc.stderr
    assert len(json.loads((work / "sweep-cli" / "sweep.json").read_text())["rows"]) == 3


def _damage_lines(text: str, how: str) -> str:
    lines = text.splitlines(keepends=True)
    return {
        "torn last line": "".join(lines)[:-5],
        "a line repeated": "".join(lines[:2] + lines[1:]),
        "a line removed": "".join(lines[:1] + lines[2:]),
        "garbage": "".join(lines[:1] + ["garbage\n"] + lines[2:]),
        "a JSON array": "".join(lines[:1] + ["[]\n"] + lines[2:]),
        "no result field": "".join(lines[:1] + ['{"id": "x"}\n'] + lines[2:]),
        "line as a string": "".join(lines[:1] + [lines[1].replace('"line": 2,', '"line": "2",')] + lines[2:]),
    }[how]


DAMAGES = {"torn last line": "its last line (line 5) is torn", "a line repeated": "line 3 holds the result of input line 2",
           "a line removed": "line 2 holds the result of input line 3", "garbage": "line 2: invalid JSON",
           "a JSON array": "line 2: expected a JSON object", "no result field": "line 2 is not a results line of this tool",
           "line as a string": "line 2 is not a results line of this tool"}  # fmt: skip


@pytest.mark.parametrize("how", sorted(DAMAGES))
def test_a_damaged_results_file_is_one_line_and_the_output_stays(kept, work, tmp_path, how):
    damaged = tmp_path / "damaged.jsonl"
    damaged.write_text(_damage_lines(kept["int8"].read_text(), how))
    shutil.copytree(scores_folder(kept["int8"]), scores_folder(damaged))
    output = tmp_path / "out.jsonl"
    _retune(kept["int8"], _params(s2=(0.6, 0.97)), output)  # an earlier retune's results, to be replaced
    before = output.read_bytes(), (tmp_path / ".out.jsonl.run.json").read_bytes()
    proc = subprocess.run([sys.executable, "-m", "imgdiff_onnx", "retune", "--input", str(damaged), "--params",
                           str(_write_params(tmp_path / "p.json", _params())), "--output", str(output), "--overwrite", "--quiet"],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert DAMAGES[how] in proc.stderr
    assert (output.read_bytes(), (tmp_path / ".out.jsonl.run.json").read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".out.jsonl.run.json", "damaged.jsonl", "damaged.jsonl.scores", "out.jsonl", "p.json"])


@pytest.mark.parametrize("how", ["truncated", "empty", "random bytes", "offsets"])
def test_a_damaged_chunk_of_kept_scores_is_one_line_naming_it(kept, tmp_path, how):
    copy = tmp_path / "kept.jsonl"
    shutil.copy(kept["int8"], copy)
    shutil.copytree(scores_folder(kept["int8"]), scores_folder(copy))
    chunk = scores_folder(copy) / "line-000000003.npz"
    data = chunk.read_bytes()
    if how == "offsets":
        with np.load(chunk) as z:
            arrays = {k: z[k] for k in z.files}
        arrays["windows"] = arrays["windows"] + 1
        np.savez_compressed(chunk, **arrays)
    else:
        chunk.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "random bytes": np.random.default_rng(1).bytes(len(data))}[how])
    with pytest.raises(RunError, match=r"line-000000003\.npz: cannot read these kept scores .*the chunk is damaged"):
        _retune(copy, _params(), tmp_path / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()


def _signalled(module: str, function: str, signum: int, argv: list[str]) -> subprocess.CompletedProcess:
    """The command `argv` in a process that signals itself the first time `module.function` runs
    (mid-way through the work, deterministically)."""
    code = f"""
import importlib, os, sys
from imgdiff_onnx.__main__ import main
m = importlib.import_module({module!r})
original = m.{function}
def once(*a, **k):
    if not getattr(once, "sent", False):
        once.sent = True
        os.kill(os.getpid(), {int(signum)})
    return original(*a, **k)
m.{function} = once
sys.exit(main({argv!r}))
"""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_retune_and_sweep_leaving_nothing_of_theirs(kept, work, tmp_path, signum):
    params = str(_write_params(tmp_path / "p.json", _params(s2=(0.6, 0.97))))
    output = tmp_path / "out.jsonl"
    _retune(kept["int8"], _params(), output)
    before = output.read_bytes(), (tmp_path / ".out.jsonl.run.json").read_bytes()
    proc = _signalled("imgdiff_onnx.tuning.retune", "result_line", signum,
                      ["retune", "--input", str(kept["int8"]), "--params", params, "--output", str(output), "--overwrite", "--quiet"])
    name = signal.Signals(signum).name
    assert proc.returncode == 128 + signum and proc.stderr.splitlines()[0].endswith(f"{name} received: stopping; nothing of this retune is kept "
                                                                                   "(send it again to stop at once)"), proc.stderr  # fmt: skip
    assert len(proc.stderr.splitlines()) == 2 and f"stopped by {name}: nothing of this retune was written (the earlier {output} is as it was); run the same command again" in proc.stderr
    assert (output.read_bytes(), (tmp_path / ".out.jsonl.run.json").read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.jsonl.run.json", "out.jsonl", "p.json"]  # no lock, no half file
    proc = _signalled("imgdiff_onnx.tuning.sweep", "_count", signum,
                      ["sweep", "--input", str(kept["int8"]), "--vary", "min_score=0:1:0.5", "--out", str(tmp_path / "sweep"), "--quiet"])
    assert proc.returncode == 128 + signum and f"stopped by {name}: the sweep wrote nothing; run the same command again" in proc.stderr
    assert not (tmp_path / "sweep").exists()


@st.composite
def damages(draw) -> list[tuple]:
    """A few random damages to a kept run: its results file and its scores folder."""
    kinds = st.sampled_from(["cut", "bytes", "repeat", "drop", "cut chunk", "bytes chunk", "swap chunks", "drop chunk", "meta"])
    return [(kind, draw(st.integers(0, 10**6)), draw(st.binary(min_size=1, max_size=12))) for kind in draw(st.lists(kinds, min_size=1, max_size=3))]


def _damage(results: Path, damage: list[tuple]) -> None:
    folder = scores_folder(results)
    for kind, at, junk in damage:
        chunks = sorted(folder.glob("line-*.npz"))
        if kind in ("cut", "bytes", "repeat", "drop"):
            data = results.read_bytes()
            lines = data.splitlines(keepends=True)
            k = at % max(1, len(data))
            data = {"cut": lambda: data[:k], "bytes": lambda: data[:k] + junk + data[k + len(junk):],
                    "repeat": lambda: b"".join(lines[: at % len(lines) + 1] + lines[at % len(lines):]),
                    "drop": lambda: b"".join(lines[: at % len(lines)] + lines[at % len(lines) + 1:])}[kind]()  # fmt: skip
            results.write_bytes(data)
        elif kind in ("cut chunk", "bytes chunk") and chunks:
            chunk = chunks[at % len(chunks)]
            data = chunk.read_bytes()
            k = at % max(1, len(data))
            chunk.write_bytes(data[:k] if kind == "cut chunk" else data[:k] + junk + data[k + len(junk):])
        elif kind == "swap chunks" and len(chunks) > 1:
            a, b = chunks[0], chunks[-1]
            tmp = a.with_name("swap")
            a.rename(tmp), b.rename(a), tmp.rename(b)
        elif kind == "drop chunk" and chunks:
            chunks[at % len(chunks)].unlink(missing_ok=True)
        elif kind == "meta":
            meta = folder / "meta.json"
            data = meta.read_bytes()
            k = at % max(1, len(data))
            meta.write_bytes(data[:k] + junk + data[k + len(junk):])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(damage=damages())
def test_a_damaged_kept_run_is_retuned_and_swept_or_refused_in_one_line_leaving_the_users_files(kept, damage):
    """No traceback whatever the damage: the command works on what is readable, or says in one line
    what is wrong, and the files it would replace stay byte for byte."""
    from imgdiff_onnx.errors import ImgDiffError

    with tempfile.TemporaryDirectory() as scratch:
        work_dir = Path(scratch)
        copy = work_dir / "kept.jsonl"
        shutil.copy(kept["int8"], copy)
        shutil.copytree(scores_folder(kept["int8"]), scores_folder(copy))
        _damage(copy, damage)
        output = work_dir / "out.jsonl"
        _retune(kept["int8"], _params(s2=(0.6, 0.97)), output)
        before = {p.name: p.read_bytes() for p in work_dir.iterdir() if p.is_file()}
        try:
            retune_file(copy, _params(), output, RetuneOptions(overwrite=True, progress=False))
        except ImgDiffError as exc:
            assert "\n" not in str(exc)
            assert {p.name: p.read_bytes() for p in work_dir.iterdir() if p.is_file()} == before
        try:
            sweep_file(copy, [parse_axis("min_score=0:1:0.5")], work_dir / "sweep", SweepOptions(progress=False))
        except ImgDiffError as exc:
            assert "\n" not in str(exc) and not (work_dir / "sweep").exists()
