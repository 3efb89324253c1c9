"""Shard inputs: what reading and decoding cost per pair beside the models, the peak memory of
reading a large Parquet file and a large tar shard, and the results of the same pairs as JSON Lines
+ files, Parquet and tar.

1. Cost: the recipe case's two pasted pairs (benchmarks.data_juicer_peer: PNG photos, 855x1083 and
   1536x2048), replicated to `--pairs` distinct files (a few random bytes after each image's end,
   which decoders ignore), packed into Parquet and tar shards. Each format is read as `run` reads
   it (records, then both images decoded by the engine's rules), three interleaved rounds, CPU
   time of this process, page cache warm. With `--models`, the engine then runs the two pairs
   at the recipe's gates in this same process: the model cost the reading is compared with.
2. Memory: one Parquet file (in row groups of 1 GB) and one tar of `--big-gb` GB each (the real
   pair's JPEGs, each made distinct), read through by a child process each (every record with its
   image bytes; not decoded: a decode holds one image's pixels at a time, whatever the file, and
   30,000 pairs of decodes would take a quarter of an hour); its peak RSS (VmHWM) against a child
   that imports the same modules and reads nothing.
3. Results: with `--models`, `run` on 6 pasted pairs as JSON Lines, Parquet and tar shards; the
   results rows are compared without where each came from.

    python -m benchmarks.shard_io --out benchmarks/results/shard_io --models models-full-b6 [--pairs 200] [--big-gb 5]
    python -m benchmarks.shard_io --out benchmarks/results/shard_io_rg64 --skip-cost --big-gb 5 --row-group-mb 64
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.machine import cpu_description, save_record

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def _distinct(data: bytes, n: int) -> bytes:
    """The same image, made a distinct file: bytes after the image's end, which decoders ignore."""
    return data + n.to_bytes(8, "little") + os.urandom(8)


def _dataset(work: Path, pairs: list[dict], count: int) -> Path:
    """`count` records cycling through `pairs`, each with its own image files."""
    (work / "img").mkdir(parents=True, exist_ok=True)
    with open(work / "pairs.jsonl", "w", encoding="utf-8") as handle:
        for n in range(count):
            p = pairs[n % len(pairs)]
            names = []
            for which in ("image1", "image2"):
                name = f"img/{n:06d}_{which}{Path(p[which]).suffix}"
                (work / name).write_bytes(_distinct(Path(p[which]).read_bytes(), n))
                names.append(name)
            handle.write(json.dumps({"id": f"p{n:06d}", "caption1": p["caption1"], "caption2": p["caption2"], "image_path1": names[0],
                                     "image_path2": names[1]}) + "\n")  # fmt: skip
    return work / "pairs.jsonl"


def read_all(spec: str, decode: bool = True) -> int:
    """Every record of `spec` (a JSON Lines file or shards) read and, with `decode`, both images
    decoded, as a run does."""
    from imgdiff_onnx.imageio import load_image
    from imgdiff_onnx.runs.columns import ColumnMap
    from imgdiff_onnx.runs.shards import is_shard_input, list_shards, read_shard

    n = 0
    if is_shard_input(spec):
        lines = (line for shard in list_shards(spec) for line in read_shard(shard, ColumnMap(), None))
    else:
        from imgdiff_onnx.runs.jsonl import input_batches

        lines = (line for batch in input_batches(Path(spec), 0, None, 64) for line in batch)
    for line in lines:
        assert line.pair is not None, line.error
        if decode:
            load_image(line.pair.image1)
            load_image(line.pair.image2)
        n += 1
    return n


def _cost(work: Path, pairs: list[dict], count: int, rounds: int = 3) -> dict:
    from imgdiff_onnx.runs.pack import PackOptions, pack

    data = _dataset(work / "cost", pairs, count)
    specs = {"jsonl + files": str(data)}
    for fmt, suffix in (("parquet", "parquet"), ("webdataset", "tar")):
        pack(data, work / "cost" / fmt, PackOptions(fmt, 100, progress=False))
        specs[fmt] = str(work / "cost" / fmt / f"*.{suffix}")
    seconds: dict[str, list[float]] = {k: [] for k in specs}
    for _ in range(rounds):
        for name, spec in specs.items():
            cpu = time.process_time()
            assert read_all(spec) == count
            seconds[name].append((time.process_time() - cpu) / count)
    return {name: {"cpu_ms_per_pair_best": 1000 * min(v), "cpu_ms_per_pair_rounds": [1000 * x for x in v]} for name, v in seconds.items()}


def _engine_cost(models: Path, pairs: list[dict]) -> dict:
    from benchmarks.data_juicer_peer import GATES, engine_worker

    result = engine_worker(models, pairs, GATES["recipe"], "default")
    cpu = [r["cpu_seconds"] for r in result["rows"]]
    return {"cpu_s_per_pair": sum(cpu) / len(cpu), "rows": [{k: r[k] for k in ("key", "cpu_seconds", "counts")} for r in result["rows"]],
            "peak_rss_mb": result["peak_rss_mb"]}  # fmt: skip


def _big(work: Path, gigabytes: float, row_group_mb: float = 1000, page_rows: int = 1024) -> dict[str, Path]:
    """One Parquet file (row groups of `row_group_mb` MB) and one tar of about `gigabytes` GB of
    the real pair's JPEGs (made distinct)."""
    import io
    import tarfile

    import pyarrow as pa
    import pyarrow.parquet as pq

    images = [(SHARED / "data/pairs" / f"img_pair_{i}.jpg").read_bytes() for i in (1, 2)]
    count = int(gigabytes * 1e9 / (len(images[0]) + len(images[1]) + 32))
    out = {"parquet": work / "big" / "big.parquet", "webdataset": work / "big" / "big.tar"}
    out["parquet"].parent.mkdir(parents=True, exist_ok=True)
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema([("image_path1", image), ("image_path2", image), ("caption1", pa.string()), ("caption2", pa.string())])
    # by default row groups of ~1 GB: the layout a Hugging Face image dataset may have
    rows_per_group = max(1, int(row_group_mb * 1e6 / (len(images[0]) + len(images[1]))))
    # page_rows: pyarrow closes a data page at most every write_batch_size rows (default 1,024), and a reader decodes a page whole
    with pq.ParquetWriter(out["parquet"], schema, compression="none", use_dictionary=False, write_batch_size=page_rows) as writer, \
            tarfile.open(out["webdataset"], "w") as archive:  # fmt: skip
        for start in range(0, count, rows_per_group):
            rows = []
            for n in range(start, min(count, start + rows_per_group)):
                a, b = _distinct(images[0], n), _distinct(images[1], n)
                rows.append({"image_path1": {"bytes": a, "path": None}, "image_path2": {"bytes": b, "path": None},
                             "caption1": "A plane in the sky.", "caption2": "A boat on the sea."})  # fmt: skip
                for name, blob in ((f"{n:09d}.img1.jpg", a), (f"{n:09d}.img2.jpg", b),
                                   (f"{n:09d}.json", b'{"caption1": "A plane in the sky.", "caption2": "A boat on the sea."}')):  # fmt: skip
                    info = tarfile.TarInfo(name)
                    info.size = len(blob)
                    archive.addfile(info, io.BytesIO(blob))
            writer.write_table(pa.Table.from_pylist(rows, schema=schema), row_group_size=rows_per_group)
            del rows
    return out


def _child_peak(spec: str | None) -> dict:
    """Peak RSS of a child that reads `spec` through (None: imports the same modules, reads nothing)."""
    code = ("import sys, time; from benchmarks.shard_io import read_all; from benchmarks.machine import process_memory_mb; "
            "import imgdiff_onnx.runs.parquet_source, imgdiff_onnx.runs.tar_source, pyarrow.parquet; "
            "t = time.process_time(); n = read_all(sys.argv[1], decode=False) if sys.argv[1] != '-' else 0; "
            "print(n, process_memory_mb('VmHWM'), time.process_time() - t)")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code, spec or "-"], cwd=ROOT, capture_output=True, text=True, check=True)
    n, peak, cpu = proc.stdout.split()
    return {"records": int(n), "peak_rss_mb": float(peak), "cpu_s": float(cpu)}


def _results(work: Path, models: Path, pairs: list[dict]) -> dict:
    from benchmarks.data_juicer_peer import GATES

    data = _dataset(work / "results", pairs, 6)
    (data.parent / "recipe.json").write_text(json.dumps(GATES["recipe"]))
    base = [sys.executable, "-m", "imgdiff_onnx", "run", "--models", str(models), "--params", "recipe.json", "--quiet"]
    cwd = data.parent
    subprocess.run(base + ["--input", "pairs.jsonl", "--output", "results.jsonl"], cwd=cwd, check=True)
    rows = {"jsonl + files": [json.loads(line) for line in (cwd / "results.jsonl").read_text().splitlines()]}
    for fmt, suffix in (("parquet", "parquet"), ("webdataset", "tar")):
        subprocess.run([sys.executable, "-m", "imgdiff_onnx", "pack", "--input", "pairs.jsonl", "--out", fmt, "--format", fmt,
                        "--pairs-per-shard", "3", "--quiet"], cwd=cwd, check=True)  # fmt: skip
        subprocess.run(base + ["--input", f"{fmt}/*.{suffix}", "--output", f"{fmt}-results"], cwd=cwd, check=True)
        rows[fmt] = [json.loads(line) for p in sorted((cwd / f"{fmt}-results").glob("*.jsonl")) for line in p.read_text().splitlines()]

    def content(row: dict) -> dict:
        fields = {k: v for k, v in row["imgdiff"].items() if k not in ("line", "input_digest", "source", "image_path1_resolved", "image_path2_resolved")}
        return {k: v for k, v in row.items() if k not in ("image_path1", "image_path2", "imgdiff")} | {"imgdiff": fields}

    reference = [content(r) for r in rows["jsonl + files"]]
    return {name: {"rows": len(r), "boxes": sum(len(x["imgdiff"]["boxes"]) for x in r), "identical_to_jsonl": [content(x) for x in r] == reference}
            for name, r in rows.items()}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--models", type=Path, help="full-size model folder (the recipe case's: --fastsam-class-bias -6.0)")
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--big-gb", type=float, default=5.0)
    parser.add_argument("--row-group-mb", type=float, default=1000, help="the big Parquet file's row groups (default 1000 MB)")
    parser.add_argument("--page-rows", type=int, default=1024, help="the big Parquet file's rows per data page at most (default 1024, pyarrow's)")
    parser.add_argument("--skip-cost", action="store_true", help="only the big files' memory")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one, removed)")
    args = parser.parse_args(argv)
    from benchmarks.data_juicer_peer import _pairs

    work = args.work or Path(tempfile.mkdtemp(prefix="shard-io-"))
    record: dict = {"cpu": cpu_description(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        pairs = _pairs(SHARED, "pasted", work / "pasted")
        record["reading"] = {} if args.skip_cost else _cost(work, pairs, args.pairs)
        if args.models:
            record["engine"] = _engine_cost(args.models, pairs)
            for name, row in record["reading"].items():
                row["share_of_engine_cpu"] = row["cpu_ms_per_pair_best"] / 1000 / record["engine"]["cpu_s_per_pair"]
            record["results"] = _results(work, args.models, pairs)
        if args.big_gb > 0:
            files = _big(work, args.big_gb, args.row_group_mb, args.page_rows)
            record["big"] = {"row_group_mb": args.row_group_mb, "page_rows": args.page_rows, "gigabytes": {k: p.stat().st_size / 1e9 for k, p in files.items()}, "baseline": _child_peak(None)}
            for name, path in files.items():
                record["big"][name] = _child_peak(str(path))
                (path).unlink()
        record["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    header = ["input", "read + decode CPU ms/pair (best of 3)", "share of the engine's CPU per pair", "big file GB", "peak RSS MB (reading it; baseline)",
              "results identical to JSON Lines"]  # fmt: skip
    rows = []
    big = record.get("big", {})
    for name in ("jsonl + files", "parquet", "webdataset"):
        reading = record["reading"].get(name, {"cpu_ms_per_pair_best": float("nan")})
        share = reading.get("share_of_engine_cpu")
        peak = big.get(name)
        rows.append([name, f"{reading['cpu_ms_per_pair_best']:.1f}", f"{100 * share:.2f}%" if share is not None else "-",
                     f"{big['gigabytes'][name]:.2f}" if peak else "-", f"{peak['peak_rss_mb']:.0f}; {big['baseline']['peak_rss_mb']:.0f}" if peak else "-",
                     str(record["results"][name]["identical_to_jsonl"]) if "results" in record else "-"])  # fmt: skip
    engine = record.get("engine")
    note = f"engine (default precision, recipe gates, the two pasted pairs): {engine['cpu_s_per_pair']:.1f} CPU-s/pair" if engine else "no engine run"
    save_record(args.out, "shard_io", {k: v for k, v in record.items() if k != "cpu"}, header, rows, note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
