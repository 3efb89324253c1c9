"""Shard inputs without models (fast tier): listing, column maps, the Parquet and WebDataset readers,
pack, and shard runs on a stand-in engine that decodes every image as the engine does: results equal
a JSON Lines run's, each shard committed whole, resume shard by shard, the output folder's rules,
and damaged shards named one line each while the run goes on."""

from __future__ import annotations

import io
import json
import os
import signal
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from imgdiff_onnx.errors import ParameterError, RunError
from imgdiff_onnx.imageio import ImageBytes, load_image_bytes, load_image_file
from imgdiff_onnx.runs.columns import ColumnMap
from imgdiff_onnx.runs.jsonl import RunOptions, run
from imgdiff_onnx.runs.pack import PackOptions, pack
from imgdiff_onnx.runs.runfile import OutputLock
from imgdiff_onnx.runs.shard_run import ERRORS, LOCK, RECORD, ShardOptions, run_shards
from imgdiff_onnx.runs.shards import ShardError, expand_braces, list_shards, read_shard
from imgdiff_onnx.runs.signals import Interrupted
from imgdiff_onnx.runs.tar_source import split_member

from .fakes import FakeEngine
from .shard_data import KINDS, content, folder_rows, jsonl_rows, make_pairs

QUIET = RunOptions(progress=False, pairs_per_batch=2)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_pairs(tmp_path_factory.mktemp("pairs"), n=7)


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory) -> list[dict]:
    """The JSON Lines run's results of the dataset, on the stand-in engine."""
    out = tmp_path_factory.mktemp("reference") / "results.jsonl"
    run(FakeEngine(read_images=True), dataset, out, QUIET)
    return jsonl_rows(out)


def _packed(dataset: Path, tmp_path: Path, fmt: str, per_shard: int = 3) -> Path:
    out = tmp_path / f"shards-{fmt}"
    counts = pack(dataset, out, PackOptions(fmt, per_shard, progress=False))
    assert counts == {"packed": 7, "left_out": 0, "shards": 3}
    return out


def _run(shards: Path | str, out: Path, options: RunOptions = QUIET, engine: FakeEngine | None = None, **kwargs) -> dict:
    return run_shards(engine or FakeEngine(read_images=True), str(shards), out, options, ShardOptions(**kwargs))


# ---- listing, names, column maps ---------------------------------------------------------------------


def test_brace_ranges_keep_zero_padding_and_expand_lists():
    assert expand_braces("s-{0008..0011}.tar") == ["s-0008.tar", "s-0009.tar", "s-0010.tar", "s-0011.tar"]
    assert expand_braces("{a,b}/{1..2}.parquet") == ["a/1.parquet", "a/2.parquet", "b/1.parquet", "b/2.parquet"]
    assert expand_braces("plain.tar") == ["plain.tar"]


def test_shards_are_listed_by_name_from_a_folder_a_glob_and_a_brace_range(tmp_path):
    for name in ("b/00001.tar", "a/00000.parquet", "00002.jsonl", ".hidden.tar", "notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    listed = list_shards(tmp_path)
    assert [(s.name, s.format) for s in listed] == [("00002.jsonl", "jsonl"), ("a/00000.parquet", "parquet"), ("b/00001.tar", "webdataset")]
    assert [s.name for s in list_shards(f"{tmp_path}/*/*")] == ["a/00000.parquet", "b/00001.tar"]
    with pytest.raises(RunError, match=r"1 of the 2 names do not exist, e.g. .*00002.tar"):
        list_shards(f"{tmp_path}/b/{{00001..00002}}.tar")
    with pytest.raises(RunError, match="no file matches"):
        list_shards(f"{tmp_path}/*.nothing")
    assert listed[1].results_name(".jsonl") == "a/00000.jsonl"


def test_webdataset_keys_follow_its_rule():
    assert split_member("dir/abc.img1.JPG") == ("dir/abc", "img1.jpg")
    assert split_member("a.b/c.json") == ("a.b/c", "json")
    assert split_member("noextension") is None


def test_column_maps_name_what_is_wrong():
    columns = ColumnMap.parse("image_path1=jpg_0, image_path2=jpg_1,caption1=txt_0")
    assert columns.column("image_path1", "parquet") == "jpg_0" and columns.column("caption2", "parquet") == "caption2"
    assert ColumnMap().column("image_path2", "webdataset") == "img2" and ColumnMap().column("image_path2", "parquet") == "image_path2"
    assert ColumnMap.parse(columns.text()) == columns
    with pytest.raises(ParameterError, match="unknown field 'image_pth1' \\(did you mean image_path1\\?\\)"):
        ColumnMap.parse("image_pth1=a")
    with pytest.raises(ParameterError, match="expected FIELD=COLUMN, got 'caption1'"):
        ColumnMap.parse("caption1")
    with pytest.raises(ParameterError, match="caption1 and caption2 both name 'txt'"):
        ColumnMap.parse("caption1=txt,caption2=txt")


# ---- images as bytes -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(KINDS))
def test_an_image_as_bytes_decodes_to_the_pixels_of_the_same_file(dataset, kind):
    record = next(r for r in jsonl_rows(dataset) if r["kind"] == kind)
    path = dataset.parent / record["image_path1"]
    from_bytes = load_image_bytes(ImageBytes(path.read_bytes(), "x")).rgb
    assert np.array_equal(from_bytes, load_image_file(path).rgb)
    if kind == "exif":  # the rotation was applied (stored 128 wide after a quarter turn of a 128 x 128 picture: compare pixels)
        stored = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(path).convert("RGB"))
        assert not np.array_equal(stored, from_bytes)


# ---- pack, and runs equal a JSON Lines run -------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["parquet", "webdataset"])
def test_packed_shards_read_back_as_the_records_with_the_files_bytes(dataset, tmp_path, fmt):
    shards = _packed(dataset, tmp_path, fmt)
    records = jsonl_rows(dataset)
    lines = [line for shard in list_shards(shards) for line in read_shard(shard, ColumnMap(), None)]
    assert len(lines) == len(records)
    for line, record in zip(lines, records):
        assert line.error is None and line.pair is not None
        assert line.pair.image1.data == (dataset.parent / record["image_path1"]).read_bytes()
        assert line.pair.image2.data == (dataset.parent / record["image_path2"]).read_bytes()
        assert (line.pair.caption1, line.pair.objects2, line.pair.key) == (record["caption1"], tuple(record["objects2"]), record["id"])
        assert line.record == {k: v for k, v in record.items() if k not in ("image_path1", "image_path2")}


@pytest.mark.parametrize("fmt,output_format", [("parquet", "jsonl"), ("webdataset", "jsonl"), ("parquet", "parquet"), ("webdataset", "parquet")])
def test_a_shard_run_gives_the_json_lines_runs_results(dataset, reference, tmp_path, fmt, output_format):
    shards = _packed(dataset, tmp_path, fmt)
    stats = _run(shards, tmp_path / "out", output_format=output_format)
    assert stats == {"ok": 7, "error": 0, "shard_errors": 0, "shards": 3}
    rows = folder_rows(tmp_path / "out")
    assert [content(r) for r in rows] == [content(r) for r in reference]
    key = "row" if fmt == "parquet" else "key"
    assert rows[3]["imgdiff"]["source"] == {"shard": "00001" + (".parquet" if fmt == "parquet" else ".tar"), key: 1 if fmt == "parquet" else "000000004"}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted([RECORD] + [f"0000{i}.{output_format}" for i in range(3)])


def test_a_folder_of_json_lines_files_is_a_shard_input_too(dataset, reference, tmp_path):
    (tmp_path / "in").mkdir()
    lines = dataset.read_text().splitlines(keepends=True)
    for i in range(0, 7, 4):
        (tmp_path / "in" / f"part{i}.jsonl").write_text("".join(lines[i : i + 4]).replace('"img/', f'"{dataset.parent}/img/'))
    _run(tmp_path / "in", tmp_path / "out")
    assert [content(r) for r in folder_rows(tmp_path / "out")] == [content(r) for r in reference]


def test_results_parquet_has_typed_boxes_and_loads_as_a_hugging_face_dataset(dataset, tmp_path):
    _run(_packed(dataset, tmp_path, "parquet"), tmp_path / "out", output_format="parquet")
    table = pq.read_table(tmp_path / "out" / "00000.parquet")
    assert table.schema.field("imgdiff").type.field("boxes").type == pa.list_(pa.list_(pa.float32(), 4))
    assert "image_path1" not in table.column_names and "caption1" in table.column_names  # image bytes are not copied
    datasets = pytest.importorskip("datasets", reason="datasets is not installed (pip install datasets)")
    loaded = datasets.load_dataset("parquet", data_files=str(tmp_path / "out" / "*.parquet"), split="train",
                                   cache_dir=str(tmp_path / "hf-cache"))  # fmt: skip
    assert len(loaded) == 7 and loaded[0]["id"] == "pair0" and len(loaded[0]["imgdiff"]["boxes"][0]) == 4


def test_parquet_columns_of_other_names_and_types(dataset, reference, tmp_path):
    """img2dataset's layout: plain binary image columns, captions under other names; and a path column."""
    records = jsonl_rows(dataset)
    rows = [{"jpg_0": (dataset.parent / r["image_path1"]).read_bytes(), "jpg_1": (dataset.parent / r["image_path2"]).name,
             "txt_0": r["caption1"], "txt_1": r["caption2"], "objects1": r["objects1"], "objects2": r["objects2"], "key": r["id"]}
            for r in records]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "data.parquet")
    out = tmp_path / "out"
    columns = ColumnMap.parse("image_path1=jpg_0,image_path2=jpg_1,caption1=txt_0,caption2=txt_1,id=key")
    assert _run(tmp_path / "data.parquet", out, columns=columns, image_root=dataset.parent / "img")["ok"] == 7
    got = jsonl_rows(out / "data.jsonl")
    assert [g["imgdiff"]["pair_similarity"] for g in got] == [r["imgdiff"]["pair_similarity"] for r in reference]
    assert got[0]["jpg_1"] == "pair0_2.jpg" and "jpg_0" not in got[0]  # a path column passes through, bytes do not
    assert got[0]["imgdiff"]["image_path2_resolved"] == str(dataset.parent / "img" / "pair0_2.jpg")


def test_parquet_results_keep_the_input_columns_types(dataset, tmp_path):
    """Pass-through columns go through the JSON results line; Parquet results give them back their
    Arrow types: integer widths, timestamps, dates, decimals, binary, lists and structs."""
    import datetime
    import decimal

    records = jsonl_rows(dataset)[:3]
    n = len(records)
    extra = {
        "n": pa.array(range(n), pa.int16()),
        "t": pa.array([datetime.datetime(2024, 5, k + 1, 12, 30, 15, 250000) for k in range(n)], pa.timestamp("us")),
        "tz": pa.array([datetime.datetime(2024, 5, 1, tzinfo=datetime.timezone.utc)] * n, pa.timestamp("ms", tz="UTC")),
        "d": pa.array([datetime.date(2024, 5, k + 1) for k in range(n)], pa.date32()),
        "price": pa.array([decimal.Decimal("12.34"), None, decimal.Decimal("-0.05")], pa.decimal128(6, 2)),
        "blob": pa.array([b"\x00\xff", b"", None], pa.binary()),
        "tags": pa.array([["a", "b"], [], None], pa.list_(pa.string())),
        "meta": pa.array([{"a": 1, "b": "x"}, None, {"a": -2, "b": None}], pa.struct([("a", pa.int8()), ("b", pa.string())])),
    }
    images = {k: pa.array([(dataset.parent / r[k]).read_bytes() for r in records], pa.binary()) for k in ("image_path1", "image_path2")}
    texts = {k: pa.array([r[k] for r in records]) for k in ("caption1", "caption2", "objects1", "objects2", "id")}
    table = pa.table(images | texts | extra)
    pq.write_table(table, tmp_path / "typed.parquet")
    _run(tmp_path / "typed.parquet", tmp_path / "out", output_format="parquet")
    got = pq.read_table(tmp_path / "out" / "typed.parquet")
    for name in extra:
        assert got.schema.field(name).type == table.schema.field(name).type, name
        assert got.column(name).to_pylist() == table.column(name).to_pylist(), name
    assert [r["imgdiff"]["status"] for r in got.to_pylist()] == ["ok"] * n


def test_a_named_column_that_is_missing_lists_the_files_columns_and_types(tmp_path):
    pq.write_table(pa.table({"image_path1": [b"x"], "image_path2": [b"y"], "caption1": ["a"], "n": pa.array([1], pa.int32())}), tmp_path / "a.parquet")
    shard = list_shards(tmp_path / "a.parquet")[0]
    with pytest.raises(ShardError, match=r"^no column txt \(caption2\); its columns are image_path1: binary, image_path2: binary, caption1: string, n: int32$"):
        list(read_shard(shard, ColumnMap.parse("caption2=txt"), None))
    pq.write_table(pa.table({"image_path1": [1], "image_path2": [b"y"]}), tmp_path / "b.parquet")
    with pytest.raises(ShardError, match=r"column image_path1 has type int64; an image column is a struct \{bytes, path\}, binary, or a path string"):
        list(read_shard(list_shards(tmp_path / "b.parquet")[0], ColumnMap(), None))


# ---- damaged shards: one line each, what was read is kept, the run goes on ------------------------------


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _sample(key: str, dataset: Path, caption: object = "A cat.") -> list[tuple[str, bytes]]:
    image = (dataset.parent / "img" / "pair4_1.jpg").read_bytes()
    return [(f"{key}.img1.jpg", image), (f"{key}.img2.jpg", image), (f"{key}.json", json.dumps({"caption1": caption, "caption2": "A dog."}).encode())]


def _read(path: Path) -> tuple[list, str | None]:
    lines, error = [], None
    try:
        for line in read_shard(list_shards(path)[0], ColumnMap(), None):
            lines.append(line)
    except ShardError as exc:
        error = str(exc)
    return lines, error


def test_bad_samples_of_a_tar_are_their_records_errors(dataset, tmp_path):
    members = (_sample("a", dataset) + [m for m in _sample("b", dataset) if "img2" not in m[0]] + _sample("c", dataset)[:1]
               + _sample("d", dataset) + _sample("c", dataset)[1:] + _sample("a", dataset)
               + [("e.img1.jpg", b"not an image"), ("e.img2.jpg", b"x"), ("e.json", b"[1]"), ("README", b"x")]
               + [m for m in _sample("f", dataset) if "json" not in m[0]] + [("f.caption1.txt", b"\xff")])  # fmt: skip
    (tmp_path / "s.tar").write_bytes(_tar(members))
    lines, error = _read(tmp_path / "s.tar")
    assert error is None
    by_key = [(ln.source["key"], ln.error) for ln in lines]
    assert by_key[0] == ("a", None)
    assert by_key[1] == ("b", "no img2.<ext> member (image_path2)")
    assert by_key[2] == ("c", "no img2.<ext> member (image_path2)")
    assert by_key[3] == ("d", None)
    assert by_key[4][0] == "c" and by_key[4][1].startswith("key c already came as sample 3 (the members of one sample must be adjacent")
    assert by_key[5][0] == "a" and by_key[5][1].startswith("key a already came as sample 1")
    assert by_key[6] == ("e", "its json member: expected a JSON object, got an array")
    assert by_key[7] == ("f", "caption1.txt is not UTF-8 (byte 1)")
    assert [ln.number for ln in lines] == list(range(1, 9))


def test_a_truncated_tar_keeps_the_samples_before_the_cut_and_names_the_shard(dataset, tmp_path):
    data = _tar(_sample("a", dataset) + _sample("b", dataset) + _sample("c", dataset))
    (tmp_path / "s.tar").write_bytes(data[: data.index(b"b.img2.jpg") + 600])  # inside the data of b's second image
    lines, error = _read(tmp_path / "s.tar")
    assert error is not None and error.startswith("unreadable after 1 complete sample(s)")
    assert [ln.source["key"] for ln in lines] == ["a", "b"] and lines[0].error is None
    assert lines[1].error.startswith("the tar ends inside this sample")
    (tmp_path / "r.tar").write_bytes(os.urandom(3000))
    assert _read(tmp_path / "r.tar") == ([], _read(tmp_path / "r.tar")[1]) and _read(tmp_path / "r.tar")[1].startswith("not a readable tar file")


def test_bad_parquet_cells_are_their_records_errors(dataset, tmp_path):
    image = (dataset.parent / "img" / "pair4_1.jpg").read_bytes()
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({
        "image_path1": pa.array([{"bytes": image, "path": None}, None, {"bytes": None, "path": None}, {"bytes": b"", "path": "img/pair4_2.jpg"}], struct),
        "image_path2": pa.array([{"bytes": image, "path": None}] * 4, struct),
        "caption1": ["A cat.", "A cat.", "A cat.", "A cat."], "caption2": ["A dog."] * 4,
    })  # fmt: skip
    pq.write_table(table, dataset.parent / "cells.parquet")
    lines, error = _read(dataset.parent / "cells.parquet")
    assert error is None
    assert [ln.error for ln in lines] == [None, "image_path1 (image_path1) is null", "image_path1 (image_path1) is null", None]
    assert lines[3].pair.image1 == dataset.parent / "img" / "pair4_2.jpg"  # empty bytes: the path
    (dataset.parent / "cells.parquet").unlink()


def test_a_parquet_file_with_a_broken_footer_is_one_shard_error(dataset, tmp_path):
    shards = _packed(dataset, tmp_path, "parquet")
    data = (shards / "00001.parquet").read_bytes()
    (shards / "00001.parquet").write_bytes(data[:-20])
    lines, error = _read(shards / "00001.parquet")
    assert lines == [] and error.startswith("not a readable Parquet file")


def test_a_run_goes_on_past_damaged_shards_and_counts_them(dataset, reference, tmp_path, caplog):
    shards = _packed(dataset, tmp_path, "webdataset")
    data = (shards / "00001.tar").read_bytes()
    (shards / "00001.tar").write_bytes(data[: len(data) // 2])
    stats = _run(shards, tmp_path / "out")
    assert stats["shard_errors"] == 1 and stats["shards"] == 3
    rows = folder_rows(tmp_path / "out")
    first = jsonl_rows(tmp_path / "out" / "00001.jsonl")
    assert 1 <= len(first) < 3 and first[-1]["imgdiff"]["status"] == "error"
    assert [content(r) for r in rows[:3] + rows[-1:]] == [content(r) for r in reference[:3] + reference[-1:]]  # the other shards whole
    errors = [json.loads(line) for line in (tmp_path / "out" / ERRORS).read_text().splitlines()]
    assert [e["shard"] for e in errors] == ["00001.tar"] and errors[0]["error"].startswith("unreadable after")
    assert "shard 00001.tar: unreadable after" in caplog.text


# ---- the output folder, commit and resume --------------------------------------------------------------


def test_the_output_folder_is_written_only_when_new_empty_or_a_run_of_this_tool(dataset, tmp_path):
    shards = _packed(dataset, tmp_path, "parquet")
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(RunError, match=r"holds files this tool did not write \(mine.txt\)"):
        _run(shards, out)
    (out / "mine.txt").unlink()
    _run(shards, out)
    with pytest.raises(RunError, match="holds the results of a run; pass --resume to continue it or --overwrite"):
        _run(shards, out)
    (out / "mine.txt").write_text("keep me")
    _run(shards, out, RunOptions(progress=False, overwrite=True))
    assert (out / "mine.txt").read_text() == "keep me" and (out / "00002.jsonl").is_file()
    with pytest.raises(RunError, match="--limit is for a JSON Lines input"):
        _run(shards, tmp_path / "other", RunOptions(progress=False, limit=2))
    (tmp_path / "afile").write_text("")
    with pytest.raises(RunError, match="is a file; with shard inputs the results go into a folder"):
        _run(shards, tmp_path / "afile")
    with pytest.raises(RunError, match="holds the input shard"):
        _run(shards, shards)
    with pytest.raises(RunError, match="results.jsonl looks like a file name: give a folder"):
        _run(shards, tmp_path / "results.jsonl")


def test_a_second_run_on_a_locked_folder_is_refused(dataset, tmp_path):
    shards = _packed(dataset, tmp_path, "parquet")
    (tmp_path / "out").mkdir()
    lock = OutputLock(tmp_path / "out" / LOCK).acquire()
    try:
        with pytest.raises(RunError, match="is being written by another run"):
            _run(shards, tmp_path / "out")
    finally:
        lock.release()


def test_resume_skips_committed_shards_and_continues_the_one_in_flight(dataset, reference, tmp_path):
    shards = _packed(dataset, tmp_path, "webdataset")
    out = tmp_path / "out"
    _run(shards, out)
    whole = (out / "00001.jsonl").read_bytes()
    # as a crash leaves it: shard 00001 in flight with one row written and a torn second, shard 00002 not started
    (out / "00001.jsonl").unlink()
    (out / "00002.jsonl").unlink()
    first_line = whole.split(b"\n")[0] + b"\n"
    (out / ".00001.jsonl.partial").write_bytes(first_line + whole.split(b"\n")[1][:40])
    engine = FakeEngine(read_images=True)
    stats = _run(shards, out, RunOptions(progress=False, resume=True), engine)
    assert engine.pairs_seen == 2 + 1 and stats["ok"] == 3  # shard 1's last two rows, shard 2's one row
    assert (out / "00001.jsonl").read_bytes() == whole
    assert [content(r) for r in folder_rows(out)] == [content(r) for r in reference]
    assert not list(out.glob(".*.partial"))


def test_resume_refuses_a_shard_that_changed_by_name_and_other_settings_by_name(dataset, tmp_path):
    shards = _packed(dataset, tmp_path, "parquet")
    out = tmp_path / "out"
    _run(shards, out)
    with pytest.raises(RunError, match=r"written by a run with other settings: output_format \(jsonl before, parquet now\)"):
        _run(shards, out, RunOptions(progress=False, resume=True), output_format="parquet")
    os.utime(shards / "00001.parquet", ns=(1, 1))
    with pytest.raises(RunError, match="shard 00001.parquet changed since the run started"):
        _run(shards, out, RunOptions(progress=False, resume=True))
    (out / "00001.jsonl").unlink()  # as the message says: its results removed, it is redone
    _run(shards, out, RunOptions(progress=False, resume=True))
    assert (out / "00001.jsonl").is_file()


def test_a_signal_stops_after_the_batch_and_resume_completes_the_same_files(dataset, reference, tmp_path):
    shards = _packed(dataset, tmp_path, "parquet")

    class StopsOnce(FakeEngine):
        sent = False

        def process_many(self, pairs, pairs_per_batch=4):
            if self.pairs_seen >= 3 and not self.sent:  # in the first batch of the second shard
                self.sent = True
                os.kill(os.getpid(), signal.SIGINT)
            yield from super().process_many(pairs, pairs_per_batch)

    with pytest.raises(Interrupted, match=r"stopped by SIGINT: 1 of 3 shards are committed in .*; run the same command with --resume to continue$"):
        _run(shards, tmp_path / "out", engine=StopsOnce(read_images=True))
    assert (tmp_path / "out" / ".00001.jsonl.partial").is_file() and not (tmp_path / "out" / "00001.jsonl").exists()
    _run(shards, tmp_path / "out", RunOptions(progress=False, resume=True, pairs_per_batch=2))
    assert [content(r) for r in folder_rows(tmp_path / "out")] == [content(r) for r in reference]


def test_bytes_that_are_not_an_image_and_a_caption_that_is_not_a_string_are_their_records_errors(dataset, tmp_path):
    good = _sample("a", dataset)
    members = good + [("b.img1.jpg", b"GIF89a not really"), ("b.img2.jpg", good[1][1]), ("b.json", b'{"caption1": "A cat.", "caption2": "A dog."}'),
                      ("c.img1.jpg", good[0][1]), ("c.img2.jpg", good[1][1]), ("c.json", b'{"caption1": 5, "caption2": "A dog."}')]  # fmt: skip
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "s.tar").write_bytes(_tar(members))
    stats = _run(tmp_path / "in", tmp_path / "out")
    assert stats == {"ok": 1, "error": 2, "shard_errors": 0, "shards": 1}
    rows = jsonl_rows(tmp_path / "out" / "s.jsonl")
    assert [r["imgdiff"]["status"] for r in rows] == ["ok", "error", "error"]
    # "not an image (...)", or "could not decode image: ..." where another library has registered a Pillow plugin that fails
    assert rows[1]["imgdiff"]["error"].split(": ", 1)[1].startswith("s.tar b.img1.jpg")
    assert rows[2]["imgdiff"]["error"] == "caption1 must be a string, got int" and rows[2]["caption1"] == 5
