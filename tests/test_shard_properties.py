"""Property-based tests of the shard readers and runs (fast tier, stand-in engine): random bytes as a
tar, a tar cut at any byte, Parquet files with random damage. Whatever the damage, no exception but
ShardError leaves a reader, a run never fails, every record a reader could read gets exactly one
results row, and the shards beside the damaged one are whole."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imgdiff_onnx.runs.columns import ColumnMap
from imgdiff_onnx.runs.jsonl import RunOptions
from imgdiff_onnx.runs.pack import PackOptions, pack
from imgdiff_onnx.runs.shard_run import ShardOptions, run_shards
from imgdiff_onnx.runs.shards import ShardError, list_shards, read_shard

from .fakes import FakeEngine
from .shard_data import jsonl_rows, make_pairs

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> dict[str, Path]:
    """The test pairs as a Parquet shard and a tar shard (4 pairs each, small pictures)."""
    root = tmp_path_factory.mktemp("fuzz")
    dataset = make_pairs(root, n=4, size=48)
    out = {}
    for fmt, suffix in (("parquet", ".parquet"), ("webdataset", ".tar")):
        pack(dataset, root / fmt, PackOptions(fmt, 4, progress=False))
        out[fmt] = root / fmt / f"00000{suffix}"
    return out


def _read(path: Path) -> tuple[list, ShardError | None]:
    lines = []
    try:
        for line in read_shard(list_shards(path)[0], ColumnMap(), None):
            lines.append(line)
    except ShardError as exc:
        return lines, exc
    return lines, None


def _run_beside_a_good_shard(damaged: bytes, suffix: str, good: Path) -> tuple[list, list[dict], list[dict], dict]:
    """A run over the damaged shard and an intact one: what the reader gives for the damaged
    shard, the results rows of both, and the run's counts."""
    folder = Path(tempfile.mkdtemp(prefix="fuzz-run-"))
    try:
        (folder / "in").mkdir()
        (folder / "in" / f"a{suffix}").write_bytes(damaged)
        shutil.copy(good, folder / "in" / f"b{suffix}")
        lines, _ = _read(folder / "in" / f"a{suffix}")
        stats = run_shards(FakeEngine(read_images=True), str(folder / "in"), folder / "out", RunOptions(progress=False, pairs_per_batch=3), ShardOptions())
        return lines, jsonl_rows(folder / "out" / "a.jsonl"), jsonl_rows(folder / "out" / "b.jsonl"), stats
    finally:
        shutil.rmtree(folder)


@FUZZ
@given(data=st.binary(max_size=4096))
def test_random_bytes_as_a_tar_are_at_most_one_shard_error(tmp_path, data):
    (tmp_path / "x.tar").write_bytes(data)
    lines, error = _read(tmp_path / "x.tar")
    assert all(line.pair is not None or line.error for line in lines)
    assert error is None or str(error)


@FUZZ
@given(cut=st.floats(0, 1))
def test_a_tar_cut_anywhere_keeps_the_records_before_the_cut(packed, cut):
    data = packed["webdataset"].read_bytes()
    damaged = data[: int(len(data) * cut)]
    whole, _ = _read(packed["webdataset"])
    lines, a_rows, b_rows, stats = _run_beside_a_good_shard(damaged, ".tar", packed["webdataset"])
    keys = [line.source["key"] for line in lines]
    assert keys == [line.source["key"] for line in whole][: len(keys)]  # a prefix, in order
    for line, intact in zip(lines[:-1], whole):  # all but the last are complete samples
        assert (line.error, line.digest) == (intact.error, intact.digest)
    assert [r["imgdiff"]["source"]["key"] for r in a_rows] == keys  # exactly one row per record read
    assert len(b_rows) == 4 and all(r["imgdiff"]["status"] == "ok" for r in b_rows)
    assert stats["shard_errors"] <= 1 and stats["ok"] + stats["error"] == len(keys) + 4


@FUZZ
@given(st.data())
def test_a_parquet_file_with_random_damage_is_read_or_named(packed, data):
    original = bytearray(packed["parquet"].read_bytes())
    damage = data.draw(st.sampled_from(["truncate", "overwrite"]))
    if damage == "truncate":
        damaged = bytes(original[: data.draw(st.integers(0, len(original) - 1))])
    else:
        for _ in range(data.draw(st.integers(1, 8))):
            at = data.draw(st.integers(0, len(original) - 1))
            original[at] = data.draw(st.integers(0, 255))
        damaged = bytes(original)
    lines, a_rows, b_rows, stats = _run_beside_a_good_shard(damaged, ".parquet", packed["parquet"])
    assert [r["imgdiff"]["source"]["row"] for r in a_rows] == [line.number for line in lines] == list(range(1, len(lines) + 1))
    assert len(b_rows) == 4 and all(r["imgdiff"]["status"] == "ok" for r in b_rows)
    assert stats["ok"] + stats["error"] == len(lines) + 4
    json.dumps(a_rows)  # every row is JSON
