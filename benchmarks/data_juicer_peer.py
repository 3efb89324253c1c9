"""The real peer: py-data-juicer 1.6.1's `imgdiff_difference_area_generator_mapper` and the engine,
side by side in one run, on the same checkpoints and pairs.

Each side runs in its own process (peak RSS from VmHWM, CPU time of the whole process, which
counts every thread): Data-Juicer in its own virtualenv (tests/dj_env.py, plus the packages its
operator imports lazily: transformers < 5, ultralytics, nltk), loading the PyTorch checkpoints
that a random-init export saves under MODELS/torch/; the engine with the given precisions
(default: its default settings). Reported: wall and CPU seconds per pair, cores busy, peak RSS,
the ratios, and the engine's final boxes against Data-Juicer's (F1 at IoU 0.9).

    python -m benchmarks.data_juicer_peer --models MODELS --out benchmarks/results/dj_peer \
        [--gates open|recipe] [--precisions default,fp32,int8] [--pairs real|pasted] [--keep-data-juicer]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

from benchmarks.machine import cpu_description, cpu_line, process_memory_mb  # noqa: E402

GATES = {
    # every gate open: all candidates reach every stage (the most work for both sides)
    "open": {
        "image_pair_similarity_filter_args": {"min_score_1": -1.0, "max_score_1": 1.0, "min_score_2": -1.0, "max_score_2": 1.0},
        "image_segment_mapper_args": {"imgsz": 1024, "conf": 0.05, "iou": 0.5},
        "image_text_matching_filter_args": {"min_score": 0.0, "max_score": 1.0},
    },
    # the published Img-Diff recipe's crop-pair gate and ITM bound, whole-pair gate open
    # (random weights put unrelated images' similarity anywhere)
    "recipe": {
        "image_pair_similarity_filter_args": {"min_score_1": -1.0, "max_score_1": 1.0, "min_score_2": 0.0, "max_score_2": 0.85},
        "image_segment_mapper_args": {"imgsz": 1024, "conf": 0.05, "iou": 0.5},
        "image_text_matching_filter_args": {"min_score": 0.4, "max_score": 1.0},
    },
}


def _dj_checkpoints(models: Path, work: Path) -> tuple[Path, Path]:
    """Copies of the export's CLIP and BLIP folders that transformers 4.57 (Data-Juicer's pin)
    reads: the same weights and image-processor values, processors saved by 4.57 itself. The
    random-init export saves them with transformers 5, whose processor files 4.57 cannot load (and
    its CLIP folder has no tokenizer, which Data-Juicer's AutoProcessor wants; the pair filter
    only feeds it images, so a minimal one serves)."""
    import shutil

    from transformers import BertTokenizer, BlipImageProcessor, BlipProcessor, CLIPImageProcessor, CLIPProcessor, CLIPTokenizer

    clip_src, blip_src = models / "torch" / "clip", models / "torch" / "blip"
    clip_dst, blip_dst = work / "dj_clip", work / "dj_blip"
    for src, dst in ((clip_src, clip_dst), (blip_src, blip_dst)):
        dst.mkdir(parents=True, exist_ok=True)
        for name in ("config.json", "model.safetensors"):
            shutil.copy(src / name, dst / name)

    def image_args(config: dict, cls) -> dict:
        import inspect

        known = set(inspect.signature(cls.__init__).parameters)
        return {k: v for k, v in config.items() if k in known}

    clip_cfg = json.loads((clip_src / "preprocessor_config.json").read_text())
    (work / "clip_vocab.json").write_text(json.dumps({"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2}))
    (work / "clip_merges.txt").write_text("#version: 0.2\n")
    clip_tok = CLIPTokenizer(str(work / "clip_vocab.json"), str(work / "clip_merges.txt"))
    CLIPProcessor(CLIPImageProcessor(**image_args(clip_cfg, CLIPImageProcessor)), clip_tok).save_pretrained(clip_dst)
    blip_cfg = json.loads((blip_src / "processor_config.json").read_text())["image_processor"]
    vocab = json.loads((blip_src / "tokenizer.json").read_text())["model"]["vocab"]
    (work / "blip_vocab.txt").write_text("".join(w + "\n" for w, _ in sorted(vocab.items(), key=lambda kv: kv[1])))
    blip_tok = BertTokenizer(str(work / "blip_vocab.txt"), do_lower_case=True, model_max_length=512)
    BlipProcessor(BlipImageProcessor(**image_args(blip_cfg, BlipImageProcessor)), blip_tok).save_pretrained(blip_dst)
    return clip_dst, blip_dst


def dj_worker(models: Path, pairs: list[dict], params: dict, threads: int) -> dict:
    """Runs inside Data-Juicer's environment: the original operator, pair by pair."""
    import torch

    torch.set_num_threads(threads)
    from data_juicer.ops.mapper.imgdiff_difference_area_generator_mapper import Difference_Area_Generator_Mapper
    from data_juicer.utils.constant import Fields, MetaKeys

    clip_dir, blip_dir = _dj_checkpoints(models, Path.cwd())
    started = time.perf_counter()
    args = {k: dict(v) for k, v in params.items()}
    args["image_pair_similarity_filter_args"]["hf_clip"] = str(clip_dir)
    args["image_text_matching_filter_args"]["hf_blip"] = str(blip_dir)
    args["image_segment_mapper_args"]["model_path"] = str(models / "torch" / "fastsam.pt")
    op = Difference_Area_Generator_Mapper(**args, accelerator="cpu")
    load = time.perf_counter() - started
    rows = []
    for p in pairs:
        sample = {"caption1": p["caption1"], "caption2": p["caption2"], "image_path1": p["image1"], "image_path2": p["image2"], Fields.meta: {}}
        t, cpu = time.perf_counter(), time.process_time()
        out = op.process_single(sample)
        boxes = np.asarray(out[Fields.meta][MetaKeys.bbox_tag], dtype=np.float32).reshape(-1, 4)
        rows.append({"key": p["key"], "seconds": time.perf_counter() - t, "cpu_seconds": time.process_time() - cpu, "boxes": boxes.tolist()})
    return {"side": "data_juicer", "load_seconds": load, "rows": rows, "peak_rss_mb": process_memory_mb("VmHWM"), "torch_threads_after": torch.get_num_threads()}


def engine_worker(models: Path, pairs: list[dict], params: dict, precision: str) -> dict:
    from imgdiff_onnx import DifferenceAreaGenerator, EngineSettings, OperatorParams, PairInput
    from imgdiff_onnx.engine.captions import ensure_available

    started = time.perf_counter()
    ensure_available()
    # the engine's own default settings (one model call per core at once) are what is compared
    engine = DifferenceAreaGenerator(models, OperatorParams.from_mapping(params), EngineSettings(precision=None if precision == "default" else precision))
    load = time.perf_counter() - started
    rows = []
    for p in pairs:
        t, cpu = time.perf_counter(), time.process_time()
        r = engine.process(PairInput(p["image1"], p["image2"], p["caption1"], p["caption2"], key=p["key"]))
        rows.append({"key": p["key"], "seconds": time.perf_counter() - t, "cpu_seconds": time.process_time() - cpu, "boxes": r.boxes.tolist(),
                     "counts": r.counts, "times": r.times, "band": r.band})  # fmt: skip
    return {"side": f"engine {engine.models.precision}", "precision_arg": precision, "load_seconds": load, "rows": rows, "peak_rss_mb": process_memory_mb("VmHWM")}


def _pairs(shared: Path, which: str, work: Path) -> list[dict]:
    if which == "real":
        return [{"key": "real pair", "image1": str(shared / "data/pairs/img_pair_1.jpg"), "image2": str(shared / "data/pairs/img_pair_2.jpg"),
                 "caption1": "A plane in the sky flying alone.", "caption2": "A boat in the ocean sailing alone."}]  # fmt: skip
    # Img-Diff-like: one region of a photo replaced (a patch of another photo pasted in), captions naming it
    import cv2

    work.mkdir(parents=True, exist_ok=True)
    out = []
    for i, (base, patch) in enumerate((("img8.jpg", "cat.jpg"), ("img10.jpg", "img3.jpg"))):
        image = cv2.imread(str(shared / "data/images" / base))
        h, w = image.shape[:2]
        other = cv2.resize(cv2.imread(str(shared / "data/images" / patch)), (w // 3, h // 3))
        edited = image.copy()
        edited[h // 3 : h // 3 + other.shape[0], w // 3 : w // 3 + other.shape[1]] = other
        p1, p2 = work / f"pasted{i}_1.png", work / f"pasted{i}_2.png"
        cv2.imwrite(str(p1), image)
        cv2.imwrite(str(p2), edited)
        out.append({"key": f"pasted {i}", "image1": str(p1), "image2": str(p2), "caption1": "A lamp on the table in the room.",
                    "caption2": "A cat on the table in the room."})  # fmt: skip
    return out


def _dj_python() -> Path:
    from tests.dj_env import ensure_dj_python

    return ensure_dj_python(peer=True)


def _spawn(python: Path, job: dict, out: Path) -> dict:
    job_file = out / f"job-{job['name']}.json"
    result_file = out / f"result-{job['name']}.json"
    job_file.write_text(json.dumps(job))
    nltk_data = Path(os.environ.get("NLTK_DATA", ROOT.parent / "shared" / "nltk_data")).resolve()  # the worker runs in `out`
    # Data-Juicer's virtualenv has neither this checkout's package nor its benchmarks installed: the
    # checkout is on its PYTHONPATH (the worker runs in `out`, where Data-Juicer writes its caches)
    env = {**os.environ, "NLTK_DATA": str(nltk_data), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([str(python), "-m", "benchmarks.data_juicer_peer", "--worker", str(job_file), str(result_file)], env=env, cwd=out, text=True, capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{job['name']} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return json.loads(result_file.read_text())


def _found(boxes: list) -> list:
    """The boxes a side found: Data-Juicer writes one all-zero row when it finds none."""
    return [] if len(boxes) == 1 and not any(boxes[0]) else boxes


def _summary(result: dict, reference: dict) -> dict:
    from imgdiff_onnx.engine.boxes import box_matches

    rows, ref_rows = result["rows"], {r["key"]: _found(r["boxes"]) for r in reference["rows"]}
    wall = sum(r["seconds"] for r in rows) / len(rows)
    cpu = sum(r["cpu_seconds"] for r in rows) / len(rows)
    matches = sum(box_matches(ref_rows[r["key"]], _found(r["boxes"])) for r in rows)
    total = sum(len(ref_rows[r["key"]]) + len(_found(r["boxes"])) for r in rows)
    return {"side": result["side"], "wall_s_per_pair": wall, "cpu_s_per_pair": cpu, "cores_busy": cpu / wall if wall else 0.0,
            "peak_rss_mb": result["peak_rss_mb"], "load_seconds": result["load_seconds"], "box_f1_vs_dj": 1.0 if total == 0 else 2 * matches / total,
            "boxes": [len(_found(r["boxes"])) for r in rows], "box_lists": [r["boxes"] for r in rows], "band": _band(rows)}  # fmt: skip


def _band(rows: list[dict]) -> str:
    """The guard band's re-scores over the pairs, per score ("-" when nothing ran banded)."""
    from imgdiff_onnx.engine.band import BandTally

    tally = BandTally.empty()
    for r in rows:
        tally.merge(r.get("band") or {})
    return tally.describe() if tally.scored else "-"


def _table(summaries: list[dict]) -> str:
    dj = summaries[0]
    lines = ["| | " + " | ".join(s["side"] for s in summaries) + " |", "|---|" + "---|" * len(summaries)]

    def row(name, fn):
        lines.append(f"| {name} | " + " | ".join(fn(s) for s in summaries) + " |")

    row("wall s/pair", lambda s: f"{s['wall_s_per_pair']:.1f}")
    row("CPU s/pair (cores busy)", lambda s: f"{s['cpu_s_per_pair']:.1f} ({s['cores_busy']:.2f})")
    row("less CPU than Data-Juicer", lambda s: f"**{dj['cpu_s_per_pair'] / s['cpu_s_per_pair']:.1f}x**")
    row("less wall time than Data-Juicer", lambda s: f"{dj['wall_s_per_pair'] / s['wall_s_per_pair']:.1f}x")
    row("peak RSS (MB)", lambda s: f"{s['peak_rss_mb']:.0f}")
    row("load (s)", lambda s: f"{s['load_seconds']:.1f}")
    row("final boxes per pair", lambda s: ", ".join(map(str, s["boxes"])))
    row("box F1 vs Data-Juicer (IoU 0.9)", lambda s: f"**{s['box_f1_vs_dj']:.3f}**")
    fp32 = next((s for s in summaries if s["side"] == "engine fp32"), None)
    if fp32 is not None:
        row("boxes identical to engine fp32", lambda s: "" if s is dj else ("yes" if s["box_lists"] == fp32["box_lists"] else "**no**"))
    row("re-scored in fp32 (guard band)", lambda s: s.get("band", "-"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--worker":
        job = json.loads(Path(argv[1]).read_text())
        models, pairs = Path(job["models"]), job["pairs"]
        if job["side"] == "data_juicer":
            result = dj_worker(models, pairs, job["params"], job["threads"])
        else:
            result = engine_worker(models, pairs, job["params"], job["precision"])
        Path(argv[2]).write_text(json.dumps(result))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, required=True, help="a random-init export (has torch/ checkpoints)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--gates", choices=sorted(GATES), default="open")
    parser.add_argument("--pairs", choices=("real", "pasted"), default="real")
    parser.add_argument("--precisions", default="default", help="engine runs, ';'-separated (each a precision or 'default')")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the Data-Juicer side (the engine runs with its default settings: one model call per core)")
    parser.add_argument("--keep-data-juicer", action="store_true",
                        help="run the engine only, beside the Data-Juicer result already in --out (same job, checked)")
    parser.add_argument("--from-results", action="store_true", help="no new runs: the table again from the result files in --out")
    args = parser.parse_args(argv)
    args.out = args.out.resolve()  # the workers run in it
    args.out.mkdir(parents=True, exist_ok=True)
    shared = ROOT.parent / "shared"
    pairs = _pairs(shared, args.pairs, args.out / "pairs")
    params = GATES[args.gates]
    models = args.models.resolve()
    base = {"models": str(models), "pairs": pairs, "params": params, "threads": args.threads}
    precisions = [p.strip() for p in args.precisions.split(";")]
    if args.from_results:
        results = [json.loads((args.out / f"result-{name}.json").read_text()) for name in ["data_juicer"] + [f"engine{i}" for i in range(len(precisions))]]
    else:
        if args.keep_data_juicer:  # the same pairs, models and gates (checked), run before on this machine
            kept = json.loads((args.out / "result-data_juicer.json").read_text())
            if json.loads((args.out / "job-data_juicer.json").read_text()) != {**base, "name": "data_juicer", "side": "data_juicer"}:
                parser.error(f"--keep-data-juicer: {args.out} holds a Data-Juicer run of other pairs, models or gates")
            results = [kept]
        else:
            results = [_spawn(_dj_python(), {**base, "name": "data_juicer", "side": "data_juicer"}, args.out)]
        for i, precision in enumerate(precisions):
            results.append(_spawn(Path(sys.executable), {**base, "name": f"engine{i}", "side": "engine", "precision": precision}, args.out))
    summaries = [_summary(r, results[0]) for r in results]
    cpu = cpu_description()
    record = {"cpu": cpu, "gates": args.gates, "params": params, "pairs": [p["key"] for p in pairs], "threads": args.threads,
              "models": str(models), "summaries": summaries, "raw": results}  # fmt: skip
    (args.out / "summary.json").write_text(json.dumps(record, indent=1))
    table = f"{cpu_line(cpu)}\n\ngates: {args.gates}; pairs: {', '.join(record['pairs'])}; {args.threads} threads\n\n{_table(summaries)}\n"
    (args.out / "table.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
