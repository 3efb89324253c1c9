"""What keeping scores costs and what a retune saves, measured side by side in one run.

    python -m benchmarks.tuning --models MODELS --out benchmarks/results/tuning [--replicate 100000]

1. A gated run and a `--keep-scores` run of the same pairs (the real Img-Diff pair and two
   pasted pairs) at the recipe's thresholds, and a gated run with every gate open, each in its
   own process: CPU seconds, the kept scores' size per pair, and the time spent writing them
   (pack + save of every chunk again, timed in this process).
2. `retune` of the kept run to other thresholds against a fresh gated run at those thresholds:
   byte-identical output is checked, CPU seconds of both.
3. The kept int8 run's lines and scores repeated to `--replicate` pairs (line numbers and
   digests renumbered, scores and boxes jittered by 1e-7 / 1e-3 so that the copies compress as
   real sheets do), and `retune` of that file timed: the decisions only (an int8 run needs no
   fp32 re-score).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.data_juicer_peer import _pairs
from benchmarks.machine import cpu_description
from imgdiff_onnx.runs.jsonlines import line_digest
from imgdiff_onnx.pairs import ScoreSheet
from imgdiff_onnx.runs.scores import KeptScoresMeta, ScoreWriter, read_sheets, scores_folder

ROOT = Path(__file__).resolve().parents[1]
STRICTER = {"image_pair_similarity_filter_args": {"min_score_1": 0.1, "max_score_1": 0.98, "min_score_2": 0.1, "max_score_2": 0.9},
            "image_text_matching_filter_args": {"min_score": 0.3, "max_score": 1.0}}  # fmt: skip
OPEN = {"image_pair_similarity_filter_args": {"min_score_1": -1, "max_score_1": 1, "min_score_2": -1, "max_score_2": 1},
        "image_text_matching_filter_args": {"min_score": 0, "max_score": 1}}  # fmt: skip


def _cli(*args: str) -> dict:
    """Run `python -m imgdiff_onnx ARGS` in a child: its wall and CPU seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "imgdiff_onnx", *args, "--quiet"], check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": round(time.perf_counter() - start, 2), "cpu_s": round(cpu, 2)}


def _dataset(out: Path) -> Path:
    shared = ROOT.parent / "shared"
    rows = _pairs(shared, "real", out / "pairs") + _pairs(shared, "pasted", out / "pairs")
    path = out / "pairs.jsonl"
    path.write_text("".join(json.dumps({"id": r["key"], "image_path1": r["image1"], "image_path2": r["image2"],
                                        "caption1": r["caption1"], "caption2": r["caption2"]}) + "\n" for r in rows))  # fmt: skip
    return path


def _writing(results: Path, scratch: Path) -> tuple[float, int]:
    """Pack and save every kept sheet again, one pair per chunk (as a run with --pairs-per-batch 1):
    what keeping the scores adds to a run's writes (seconds) and to its disk use (bytes)."""
    sheets = list(read_sheets(scores_folder(results)))
    meta = KeptScoresMeta.read(scores_folder(results)).to_json()
    writer = ScoreWriter(scratch, meta, 0, True)
    start = time.perf_counter()
    for line, digest, sheet in sheets:
        writer.write([line], [digest], [sheet])
    seconds = time.perf_counter() - start
    return seconds, sum(p.stat().st_size for p in scores_folder(scratch).glob("line-*.npz"))


def _jittered(sheet: ScoreSheet, rng: np.random.Generator) -> ScoreSheet:
    """The sheet with every score and box moved by a tiny random amount: copies of one sheet would
    compress to almost nothing, which real sheets do not (sizes and read times stay honest)."""
    def jitter(a: np.ndarray, scale: float) -> np.ndarray:
        return (a + rng.uniform(-scale, scale, a.shape)).astype(a.dtype)

    crop, itm1, itm2 = sheet.crop.copy(), sheet.itm1.copy(), sheet.itm2.copy()
    for scores in (crop, itm1, itm2):
        scores[..., 0] = jitter(scores[..., 0], 1e-7)
    return dataclasses.replace(sheet, boxes=jitter(sheet.boxes, 1e-3), crop=crop, itm1=itm1, itm2=itm2)


def replicate(results: Path, out: Path, n: int) -> Path:
    """`results` and its kept scores repeated to n lines, renumbered, with fresh digests (the
    scores jittered, see _jittered)."""
    rng = np.random.default_rng(0)
    lines = [json.loads(t) for t in results.read_text().splitlines()]
    sheets = {line: sheet for line, _, sheet in read_sheets(scores_folder(results))}
    big = out / "replicated.jsonl"
    writer = ScoreWriter(big, KeptScoresMeta.read(scores_folder(results)).to_json(), 0, True)
    with open(big, "w") as handle:
        for start in range(0, n, 512):
            numbers, digests, kept = [], [], []
            for k in range(start, min(n, start + 512)):
                record = json.loads(json.dumps(lines[k % len(lines)]))
                original = record["imgdiff"]["line"]
                record["id"] = f"copy {k}"
                digest = line_digest(json.dumps({"id": record["id"]}).encode())
                record["imgdiff"].update(line=k + 1, input_digest=digest)
                handle.write(json.dumps(record) + "\n")
                if original in sheets:
                    numbers.append(k + 1)
                    digests.append(digest)
                    kept.append(_jittered(sheets[original], rng))
            writer.write(numbers, digests, kept)
    return big


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--replicate", type=int, default=100_000)
    parser.add_argument("--replicate-only", action="store_true", help="step 3 only, on OUT's earlier keep_int8.jsonl (and the write cost again)")
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    if args.replicate_only:
        report = json.loads((out / "tuning.json").read_text())
        seconds, size = _writing(out / "keep.jsonl", out / "scratch.jsonl")
        report["writing_s_per_pair"], report["kept_bytes_per_pair_alone"] = round(seconds / 3, 4), size // 3
        report.pop("kept_bytes_per_pair", None)
        return _replicate_step(report, out, args.replicate)
    data = _dataset(out)
    stricter = out / "stricter.json"
    stricter.write_text(json.dumps(STRICTER))
    common = ["--models", str(args.models), "--input", str(data), "--params", "img_diff_onnx", "--overwrite"]
    report: dict = {"cpu": cpu_description(), "models": str(args.models), "pairs": 3, "date": time.strftime("%Y-%m-%d")}
    report["gated"] = _cli("run", *common, "--output", str(out / "gated.jsonl"))
    opened = out / "open.json"
    opened.write_text(json.dumps(OPEN))
    report["gated_open"] = _cli("run", *common[:-3], "--params", str(opened), "--overwrite", "--output", str(out / "gated_open.jsonl"))
    report["keep"] = _cli("run", *common, "--output", str(out / "keep.jsonl"), "--keep-scores")
    report["keep_lines_equal_gated"] = (out / "keep.jsonl").read_bytes() == (out / "gated.jsonl").read_bytes()
    report["kept_bytes"] = sum(p.stat().st_size for p in scores_folder(out / "keep.jsonl").iterdir())
    seconds, size = _writing(out / "keep.jsonl", out / "scratch.jsonl")
    report["writing_s_per_pair"], report["kept_bytes_per_pair_alone"] = round(seconds / 3, 4), size // 3
    report["retune"] = _cli("retune", "--input", str(out / "keep.jsonl"), "--params", str(stricter), "--output", str(out / "retuned.jsonl"), "--overwrite")
    fresh_args = ["--models", str(args.models), "--input", str(data), "--params", str(stricter), "--overwrite"]
    report["fresh_at_stricter"] = _cli("run", *fresh_args, "--output", str(out / "fresh.jsonl"))
    report["retune_equals_fresh"] = (out / "retuned.jsonl").read_bytes() == (out / "fresh.jsonl").read_bytes()
    report["keep_int8"] = _cli("run", *common, "--output", str(out / "keep_int8.jsonl"), "--keep-scores", "--precision", "int8")
    return _replicate_step(report, out, args.replicate)


def _replicate_step(report: dict, out: Path, n: int) -> int:
    big = replicate(out / "keep_int8.jsonl", out, n)
    report["replicated_pairs"] = n
    report["replicated_kept_bytes"] = sum(p.stat().st_size for p in scores_folder(big).iterdir())
    args = ["retune", "--input", str(big), "--params", str(out / "stricter.json"), "--output", str(out / "replicated_out.jsonl"), "--overwrite"]
    report["retune_replicated"] = _cli(*args)
    (out / "tuning.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
