"""Workers: order, nesting, failures; EngineSettings.parallelism; identical results whatever the
layout of workers and threads (fp32 and int8 graphs)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from imgdiff_onnx import DifferenceAreaGenerator, EngineSettings, OperatorParams, PairInput
from imgdiff_onnx.engine.parallel import Workers

from .conftest import DATA

OPEN = OperatorParams.from_dicts({"min_score_1": -1, "min_score_2": -1, "max_score_2": 1}, {"imgsz": 320}, {"min_score": 0, "max_score": 1})


def test_map_keeps_input_order_and_runs_on_several_threads():
    workers = Workers(3)
    seen = set()

    def slow(x: int) -> int:
        seen.add(threading.current_thread().name)
        time.sleep(0.05 * (5 - x))  # later items finish first
        return x * x

    assert workers.map(slow, list(range(5))) == [0, 1, 4, 9, 16]
    assert len(seen) > 1 and all(name.startswith("imgdiff-worker") for name in seen)
    workers.close()


@pytest.mark.parametrize("count", [1, 3])
@pytest.mark.parametrize("invariant", [True, False])
def test_map_chunks_stacks_chunk_outputs_in_input_order(count, invariant):
    from imgdiff_onnx.engine.models.batching import map_chunks

    workers = Workers(count)
    items = list(range(11))
    sizes = []

    def fn(chunk):
        sizes.append(len(chunk))
        time.sleep(0.01 * (11 - chunk[0]) / 11)  # later chunks finish first
        return np.array([[x, x * x] for x in chunk], dtype=np.float32)

    out = map_chunks(items, fn, batch_size=4, batch_invariant=invariant, workers=workers)
    workers.close()
    assert out.dtype == np.float32 and out.shape == (11, 2)
    np.testing.assert_array_equal(out, [[x, x * x] for x in items])
    assert sorted(sizes) == ([1] * 11 if not invariant else [3, 4, 4])


def test_map_chunks_refuses_a_chunk_whose_output_does_not_fit():
    from imgdiff_onnx.engine.models.batching import map_chunks

    def fn(chunk):  # the last chunk's rows are wider
        return np.zeros((len(chunk), 3 if chunk[0] == 8 else 2), np.float32)

    with pytest.raises(ValueError, match=r"a chunk of 2 gave output float32\(2, 3\)"):
        map_chunks(list(range(10)), fn, batch_size=4, batch_invariant=True)
    with pytest.raises(ValueError, match="a chunk of 4 gave output"):  # fewer rows than items
        map_chunks(list(range(8)), lambda chunk: np.zeros((1, 2)), batch_size=4, batch_invariant=True)


def test_nested_map_runs_inline_instead_of_deadlocking():
    workers = Workers(2)
    inner_threads = []

    def outer(x: int) -> list[int]:
        def inner(y: int) -> int:
            inner_threads.append(threading.current_thread())
            return x + y

        mine = threading.current_thread()
        out = workers.map(inner, [1, 2, 3])
        assert all(t is mine for t in inner_threads if t is mine) and mine in inner_threads
        return out

    assert workers.map(outer, [10, 20, 30]) == [[11, 12, 13], [21, 22, 23], [31, 32, 33]]
    workers.close()


def test_a_failure_reaches_the_caller():
    workers = Workers(2)

    def fail_on_two(x: int) -> int:
        if x == 2:
            raise KeyError("two")
        return x

    with pytest.raises(KeyError, match="two"):
        workers.map(fail_on_two, [1, 2, 3])
    assert workers.map(fail_on_two, [1, 3]) == [1, 3]  # the pool still works
    with pytest.raises(ValueError, match=">= 1"):
        Workers(0)


@pytest.mark.parametrize(
    ("workers", "threads", "expected"),
    [(0, 0, (4, 1)), (0, 2, (1, 2)), (2, 0, (2, 2)), (3, 0, (3, 1)), (2, 3, (2, 3)), (8, 0, (8, 1))],
)
def test_parallelism_choices(workers, threads, expected):
    assert EngineSettings(workers=workers, threads=threads).parallelism(cores=4) == expected


def test_parallelism_rejects_bad_values():
    with pytest.raises(ValueError, match="workers must be an integer >= 0"):
        EngineSettings(workers=-1)
    with pytest.raises(ValueError, match="threads must be an integer >= 0"):
        EngineSettings(threads=True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="windows_per_step must be an integer >= 1"):
        EngineSettings(windows_per_step=0)
    with pytest.raises(ValueError, match="crop_batch_size must be an integer >= 1"):
        EngineSettings(crop_batch_size=2.5)  # type: ignore[arg-type]


def _pairs() -> list[PairInput]:
    a, b, c = (str(DATA / p) for p in ("pairs/img_pair_1.jpg", "pairs/img_pair_2.jpg", "images/cat.jpg"))
    return [
        PairInput(a, b, objects1=("plane", "sky"), objects2=("boat", "ocean"), key="p1"),
        PairInput(c, b, objects1=("sky", "cat"), objects2=("ocean",), key="p2"),
        PairInput(b, a, objects1=("boat",), objects2=("sky", "plane"), key="p3"),
    ]


def _run(
    tiny_models, precision: str, workers: int, threads: int, windows_per_step: int = 64, segment_together: bool = False, fastsam_arena: bool = True
) -> list:
    settings = EngineSettings(
        precision=precision, workers=workers, threads=threads, windows_per_step=windows_per_step, diagnostics=True,
        segment_together=segment_together, fastsam_arena=fastsam_arena,
    )  # fmt: skip
    engine = DifferenceAreaGenerator(tiny_models, OPEN, settings)
    assert engine.workers.count == workers
    try:
        return list(engine.process_many(_pairs(), pairs_per_batch=3))
    finally:
        engine.close()


def _assert_same(a: list, b: list, what: object) -> None:
    assert a == b, what
    assert [r.diagnostics for r in a] == [r.diagnostics for r in b], what
    assert [r.to_json() for r in a] == [r.to_json() for r in b], what


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_results_do_not_depend_on_the_number_of_workers(tiny_models, precision):
    one = _run(tiny_models, precision, 1, 1)
    assert sum(len(r.boxes) for r in one) > 0, "no box at all: the comparison checks little"
    for workers in (2, 3):
        _assert_same(_run(tiny_models, precision, workers, 1), one, workers)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_results_do_not_depend_on_windows_per_step(tiny_models, precision):
    # the gates score the batch's windows a step at a time (bounded memory); a step boundary
    # must not change any score, decision or piece of evidence
    whole = _run(tiny_models, precision, 2, 1, windows_per_step=10_000)
    pending = sum(r.counts.get("unique_windows", 0) for r in whole)
    assert pending > 3 and sum(len(r.boxes) for r in whole) > 0, "too little work: the comparison checks little"
    for step in (1, 3):  # several steps per gate, one ending part-full
        _assert_same(_run(tiny_models, precision, 2, 1, windows_per_step=step), whole, step)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_results_do_not_depend_on_how_fastsam_runs(tiny_models, precision):
    # default: the two images one after the other on both threads, in the shrinking arena;
    # together: one image per worker on one thread each; without the arena: plain malloc
    base = _run(tiny_models, precision, 2, 1)
    assert sum(len(r.boxes) for r in base) > 0, "no box at all: the comparison checks little"
    for together, arena in ((True, True), (False, False), (True, False)):
        _assert_same(_run(tiny_models, precision, 2, 1, segment_together=together, fastsam_arena=arena), base, (together, arena))


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_threads_per_session_move_scores_by_float_rounding_only(tiny_models, precision):
    # onnxruntime splits some blip_itm work differently with 1 and 2 intra-op threads: an ITM
    # probability can move in its last bits (measured up to 6e-8 fp32, 2.4e-7 int8), nothing more
    a, b = _run(tiny_models, precision, 1, 1), _run(tiny_models, precision, 1, 2)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.boxes, y.boxes)
        assert (x.candidate_boxes is None) == (y.candidate_boxes is None)
        assert x.counts == y.counts and x.kept == y.kept and x.survivors == y.survivors and x.pair_similarity == y.pair_similarity
        for ex, ey in zip(x.evidence, y.evidence):
            assert (ex.word1, ex.word2, ex.crop_similarity) == (ey.word1, ey.word2, ey.crop_similarity)
            assert abs(ex.itm1 - ey.itm1) < 1e-6 and abs(ex.itm2 - ey.itm2) < 1e-6
