"""Command line: `python -m imgdiff_onnx demo` (and `export`, which needs the export extra)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from .engine.integrity import MODEL_CHECKS
from .settings import MEMORY_RELEASE, PAIRS_PER_BATCH, PAIRS_PER_SHARD, EngineSettings

ENGINE = EngineSettings()  # every engine option's default comes from here (a test checks each option against it)

log = logging.getLogger("imgdiff_onnx")


def _configure_logging(quiet: bool) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("imgdiff_onnx").setLevel(logging.WARNING if quiet else logging.INFO)


OPERATOR_NAMES = ("imgdiff_difference_area_generator_onnx_mapper", "imgdiff_difference_area_generator_mapper")
PARAM_GROUPS = ("image_pair_similarity_filter_args", "image_segment_mapper_args", "image_text_matching_filter_args")


def _load_params(path: Path | None):
    """(OperatorParams, precision or None) from JSON or YAML: either Data-Juicer's three parameter
    dicts themselves (and optionally `precision`), or a Data-Juicer recipe, whose `process:` entry
    for this operator (or the original) gives them (and its `precision`, if any)."""
    from .errors import RunError
    from .params import OperatorParams

    if path is None:
        return OperatorParams(), None
    path = _shipped_recipe(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RunError(f"--params {path}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            from .runs.jsonlines import bounded_int

            data = json.loads(text, parse_constant=_no_constant, parse_int=bounded_int)
    except Exception as exc:  # noqa: BLE001 - yaml.YAMLError / json.JSONDecodeError: one line, with the position
        kind = "YAML" if path.suffix.lower() in (".yaml", ".yml") else "JSON"
        raise RunError(f"--params {path}: not valid {kind}: {_syntax_error(exc, text)}") from None
    if not isinstance(data, dict):
        raise RunError(f"--params {path}: expected a mapping with Data-Juicer's three parameter dicts, got {type(data).__name__}")
    if "process" in data:
        data = _operator_entry(path, data["process"])
    data = dict(data)
    precision = data.pop("precision", None)
    for group in PARAM_GROUPS:
        if data.get(group) is not None and not isinstance(data[group], dict):
            raise RunError(f"--params {path}: {group} must be a mapping of parameter names to values, got {type(data[group]).__name__}")
    return OperatorParams.from_mapping(data), precision


RECIPES = Path(__file__).resolve().parent / "recipes"


def shipped_recipes() -> list[str]:
    """Names of the recipes this package ships (imgdiff_onnx/recipes/NAME.yaml)."""
    return sorted(p.stem for p in RECIPES.glob("*.yaml"))


def _shipped_recipe(path: Path) -> Path:
    """`path` itself when it exists or names a folder, else the shipped recipe of that name
    (`img_diff_onnx` or `img_diff_onnx.yaml`), else a one-line error naming the shipped ones."""
    from .errors import RunError

    if path.exists() or len(path.parts) != 1:
        return path
    shipped = RECIPES / (path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml")
    if shipped.is_file():
        return shipped
    raise RunError(f"--params {path}: no such file, and not the name of a shipped recipe ({', '.join(shipped_recipes())})")


def _syntax_error(exc: Exception, text: str) -> str:
    """A YAML or JSON syntax error in one line: what is wrong, at which line and column, and that
    line's text and the character at that column."""
    mark = getattr(exc, "problem_mark", None)
    if mark is not None:  # yaml's MarkedYAMLError
        problem, line, column = getattr(exc, "problem", None) or str(exc).splitlines()[0], mark.line + 1, mark.column + 1
    elif isinstance(exc, json.JSONDecodeError):
        problem, line, column = exc.msg, exc.lineno, exc.colno
    else:
        return " ".join(str(exc).split())[:300]
    lines = text.splitlines()
    shown = lines[line - 1] if 0 < line <= len(lines) else ""
    if len(shown) > 100:
        start = max(0, column - 50)
        shown, column = shown[start : start + 100], column - start
    return f"{problem} at line {line}, column {column}: `{shown}` (column {column} is `{shown[column - 1 : column] or 'the end'}`)"


def _no_constant(name: str) -> object:
    from .errors import ParameterError

    raise ParameterError(f"{name} is not a JSON number", "params")


def _operator_entry(path: Path, process: object) -> dict:
    """This operator's arguments in a Data-Juicer recipe's process list (its three dicts and its
    precision)."""
    from .errors import RunError

    entries = [e for e in process if isinstance(e, dict)] if isinstance(process, list) else []
    for entry in entries:
        for name in OPERATOR_NAMES:
            if name in entry:
                args = entry[name] or {}
                if not isinstance(args, dict):
                    raise RunError(f"--params {path}: the {name} entry must be a mapping of its arguments, got {type(args).__name__}")
                picked = {group: args.get(group) for group in PARAM_GROUPS}
                if args.get("precision") is not None:
                    picked["precision"] = args["precision"]
                return picked
    raise RunError(f"--params {path}: a Data-Juicer recipe, but its process list has no {' or '.join(OPERATOR_NAMES)} entry")


def _precision(args: argparse.Namespace, from_file: object):
    """--precision, else the params file's `precision`; both given and different: the command
    line wins, and the log says so."""
    if args.precision is not None and from_file is not None and str(args.precision) != str(from_file):
        log.warning("--precision %s replaces the precision %s of --params %s", args.precision, from_file, args.params)
    return args.precision if args.precision is not None else from_file


def _settings(args: argparse.Namespace, threads: int, precision: object = None):
    from .errors import RunError
    from .errors import ParameterError
    from .engine.precision import PrecisionError
    from .settings import EngineSettings

    try:
        return EngineSettings(precision=precision if precision is not None else args.precision, threads=threads, workers=args.workers, crop_batch_size=args.crop_batch_size,
                              jpeg_roundtrip=args.jpeg_roundtrip, model_check=args.model_check, memory_release=args.memory_release,
                              segment_together=args.segment_together, keep_scores=getattr(args, "keep_scores", False),
                              band_switch=getattr(args, "band_switch", False))
    except PrecisionError:
        raise
    except ParameterError as exc:  # names its setting: the flag is that name with dashes
        flag = f"--{exc.name.replace('_', '-')}: " if exc.name else ""
        raise RunError(f"{flag}{exc}") from None


def _engine(models: Path, params, args: argparse.Namespace):
    from .engine.pipeline import DifferenceAreaGenerator

    return DifferenceAreaGenerator(models, params, _settings(args, args.threads))


def run(args: argparse.Namespace) -> int:
    from .runs.jsonl import RunError, RunOptions, check_start, early_identity, run as run_jsonl

    try:
        options = RunOptions(
            limit=args.limit,
            resume=args.resume,
            overwrite=args.overwrite,
            pairs_per_batch=args.pairs_per_batch,
            timings=args.timings,
            progress=not args.quiet,
        )
    except ValueError as exc:
        raise RunError(str(exc)) from None
    params, file_precision = _load_params(args.params)
    threads = (args.threads or 1) if args.ray is not None else args.threads  # Ray: per actor; 0 ("all cores") would oversubscribe
    settings = _settings(args, threads, _precision(args, file_precision))  # a precision typo is one line here
    from .runs.shards import is_shard_input

    if is_shard_input(args.input):
        return _run_shards(args, options, params, settings)
    for name in ("columns", "image_root", "output_format"):
        if getattr(args, name) is not None:
            raise RunError(f"--{name.replace('_', '-')} is for Parquet and WebDataset shard inputs; --input {args.input} is a JSON Lines file")
    # the cheap checks (input, output, its lock, a resume's settings, caption data) before any model loads
    check_start(args.input, args.output, options, early_identity(args.models, params, settings, args.input, options))
    if args.ray is not None:
        from .runs.ray_run import RayOptions, run_ray

        try:
            ray_options = RayOptions(address=args.ray or None, actors=args.actors, threads=threads, num_cpus=args.ray_num_cpus)
        except ValueError as exc:
            raise RunError(str(exc)) from None
        stats = run_ray(args.models, params, settings, args.input, args.output, options, ray_options)
    else:
        from .engine.pipeline import DifferenceAreaGenerator

        stats = run_jsonl(DifferenceAreaGenerator(args.models, params, settings), args.input, args.output, options)
    log.info("%d ok, %d errors written to %s", stats["ok"], stats["error"], args.output)
    return 0


def _run_shards(args: argparse.Namespace, options, params, settings) -> int:
    """`run` on shards: one results file per shard in the --output folder."""
    from .errors import RunError
    from .runs.columns import ColumnMap
    from .runs.shard_run import ShardOptions, check_shard_start, run_shards

    if args.ray is not None:
        raise RunError("--ray reads a JSON Lines input; with shards, run one process per machine on its share of the shards")
    try:
        shard_options = ShardOptions(ColumnMap.parse(args.columns), args.image_root, args.output_format or "jsonl")
    except ValueError as exc:
        raise RunError(str(exc)) from None
    from .runs.jsonl import early_identity

    identity = early_identity(args.models, params, settings, Path(str(args.input)), options)
    check_shard_start(str(args.input), args.output, options, shard_options, identity)  # before any model loads
    from .engine.pipeline import DifferenceAreaGenerator

    stats = run_shards(DifferenceAreaGenerator(args.models, params, settings), str(args.input), args.output, options, shard_options)
    log.info("%d ok, %d errors in %d shard(s) written to %s; %d shard error(s)%s", stats["ok"], stats["error"], stats["shards"],
             args.output, stats["shard_errors"], f" (listed in {args.output}/.imgdiff-shard-errors.jsonl)" if stats["shard_errors"] else "")  # fmt: skip
    return 0


def pack(args: argparse.Namespace) -> int:
    from .errors import RunError
    from .runs.pack import PackOptions, pack as pack_shards

    try:
        options = PackOptions(args.format, args.pairs_per_shard, progress=not args.quiet)
    except ValueError as exc:
        raise RunError(str(exc)) from None
    counts = pack_shards(args.input, args.out, options)
    log.info("%d record(s) packed into %d %s shard(s) in %s; %d left out (named above)", counts["packed"], counts["shards"],
             args.format, args.out, counts["left_out"])  # fmt: skip
    return 0


def retune(args: argparse.Namespace) -> int:
    from .tuning.retune import RetuneOptions, retune_file

    params, precision = _load_params(args.params)
    options = RetuneOptions(overwrite=args.overwrite, progress=not args.quiet, models=args.models, precision=precision)
    counts = retune_file(args.input, params, args.output, options)
    log.info("%d lines written to %s: boxes changed on %d; %d score(s) computed in fp32 (in the guard band of the new thresholds)",
             counts["lines"], args.output, counts["changed"], counts["rescored"])  # fmt: skip
    return 0


def sweep(args: argparse.Namespace) -> int:
    from .tuning.sweep import SweepOptions, parse_axis, sweep_file

    axes = [parse_axis(text) for text in args.vary]
    paths = sweep_file(args.input, axes, args.out, SweepOptions(base=_load_params(args.params)[0] if args.params else None, progress=not args.quiet))
    rows = [r for r in json.loads(paths["json"].read_text(encoding="utf-8"))["rows"] if not r["invalid"]]
    best = sorted(rows, key=lambda r: (-r["pairs_with_boxes"], -r["boxes_per_pair"]))[:3]
    log.info("sweep of %d settings written to %s (the table: %s); the settings with the most pairs with boxes:", len(rows), args.out,
             paths["markdown"].name)  # fmt: skip
    for r in best:
        setting = ", ".join(f"{a.name}={r[a.name]:g}" for a in axes)
        log.info("  %s: %d of %d pairs with boxes, %.2f boxes per pair", setting, r["pairs_with_boxes"], r["pairs"], r["boxes_per_pair"])
    return 0


def validate(args: argparse.Namespace) -> int:
    from .errors import ParameterError
    from .errors import RunError
    from .runs.outfolder import claim
    from .review.validate import ValidateOptions, validate as run_validate
    from .review.validate_report import write_outputs, write_recommendation

    from .runs.shards import is_shard_input, list_shards

    if is_shard_input(args.input):
        list_shards(args.input)  # they exist
    elif not args.input.is_file():
        raise RunError(f"input file not found: {args.input}")
    claim(args.out, "validation")  # before the long runs, not after them
    try:
        options = ValidateOptions(
            limit=args.limit,
            min_box_f1=args.min_box_f1,
            min_candidate_f1=args.min_candidate_f1,
            min_saving=args.min_saving,
            threads=args.threads,
            crop_batch_size=args.crop_batch_size,
            progress=not args.quiet,
        )
        summary = run_validate(args.models, _load_params(args.params)[0], args.input, options)
    except ParameterError as exc:  # a bad option (no readable pair: RunError; a folder without both precisions: ModelFolderError)
        raise RunError(f"validate: {exc}") from None
    paths = write_outputs(summary, args.out)
    print(paths["markdown"].read_text(encoding="utf-8"))
    if args.write:
        manifest = write_recommendation(args.models, summary)
        log.info("recommended precision %s written to %s", summary["recommended_precision_text"], manifest)
    log.info("validation written to %s", ", ".join(str(p) for p in paths.values()))
    return 0


def show(args: argparse.Namespace) -> int:
    from .review.report import write_report

    index = write_report(args.input, args.out, args.limit, single_file=args.single_file, progress=not args.quiet, sweep=args.sweep)
    print(f"report: {index}")
    return 0


DEMO_TOO_SIMILAR = 0.99999  # the demo's upper bound of both similarity gates (its changed pairs measure <= 0.99986)


def demo(args: argparse.Namespace) -> int:
    """Export random-init models if needed, make sample pairs, run them, write the report."""
    from .runs import outfolder

    out: Path = args.out
    models = args.models or out / f"models-{args.size}"
    outfolder.prepare(out, "demo")
    try:
        return _demo_in(out, models, args)
    finally:  # what the demo wrote (also when it stopped half-way) is listed as the demo's
        files = [out / "pairs.jsonl", out / "results.jsonl", out / ".results.jsonl.run.json", *sorted((out / "pairs").glob("*"))]
        whole = [p for p in (models, out / "report") if p.absolute().is_relative_to(out.absolute())]  # each has its own record
        outfolder.record(out, "demo", [p for p in files if p.is_file()], whole)


def _demo_in(out: Path, models: Path, args: argparse.Namespace) -> int:
    import cv2

    from . import samples
    from .engine.manifest import MANIFEST_NAME
    from .params import OperatorParams
    from .review.report import write_report
    from .runs.jsonl import RunOptions, run as run_jsonl

    if not (models / MANIFEST_NAME).is_file():
        log.info("exporting random-init %s models to %s (needs the export extra)", args.size, models)
        cmd = [sys.executable, "-m", "imgdiff_onnx.export", "--random-init", args.size, "--out", str(models), "--force"]
        if args.quiet:
            cmd.append("--quiet")
        if subprocess.run(cmd).returncode != 0:
            print("error: the export step failed (see above)", file=sys.stderr)
            return 2
    data = out / "pairs"
    data.mkdir(parents=True, exist_ok=True)
    dataset = out / "pairs.jsonl"
    with open(dataset, "w", encoding="utf-8") as handle:
        for i in range(args.pairs + 1):
            sample = samples.pair(i, 512, 512)
            unchanged = i == args.pairs  # the last pair: the same picture twice, which the image-pair gate stops
            name = "unchanged" if unchanged else f"pair{i}"
            cv2.imwrite(str(data / f"{name}_1.png"), sample.image1[:, :, ::-1])
            cv2.imwrite(str(data / f"{name}_2.png"), (sample.image1 if unchanged else sample.image2)[:, :, ::-1])
            # explicit object words, so the demo's boxes do not depend on the captions (kept for reference)
            record = {
                "id": name,
                "caption1": sample.caption1,
                "caption2": sample.caption1 if unchanged else sample.caption2,
                "image_path1": f"pairs/{name}_1.png",
                "image_path2": f"pairs/{name}_2.png",
                "objects1": [sample.object1],
                "objects2": [sample.object1 if unchanged else sample.object2],
            }
            handle.write(json.dumps(record) + "\n")
    # Random weights give meaningless scores, so only the gates' upper bounds are set, just under 1,
    # where any weights agree: two identical pictures or crops have similarity 1 ("too similar" to
    # differ, as the Img-Diff recipe's upper bounds say); the lower bounds and the ITM gate stay open.
    top = DEMO_TOO_SIMILAR
    params = OperatorParams.from_dicts({"min_score_1": -1, "max_score_1": top, "min_score_2": -1, "max_score_2": top}, {"imgsz": 640}, {"min_score": 0})
    engine = _engine(models, params, args)
    results = out / "results.jsonl"
    stats = run_jsonl(engine, dataset, results, RunOptions(overwrite=True, progress=not args.quiet))
    index = write_report(results, out / "report", progress=not args.quiet)
    rows = [json.loads(line)["imgdiff"] for line in results.read_text(encoding="utf-8").splitlines()]
    stopped = [r["exit_reason"] for r in rows if r.get("exit_reason")]
    windows = sum(r["counts"].get("unique_windows", 0) for r in rows if r.get("counts"))
    passed = sum(r["counts"].get("after_crop_pair_gate", 0) for r in rows if r.get("counts"))
    print(f"models:  {models}\ndataset: {dataset}\nresults: {results} ({stats['ok']} ok, {stats['error']} errors)\nreport:  {index}")
    print(f"gates:   the image-pair gate stopped {len(stopped)} pair(s) ({'; '.join(stopped)}); the crop-pair gate stopped "
          f"{windows - passed} of {windows} crop windows, those (nearly) identical in both pictures (similarity above {top})")  # fmt: skip
    print(
        "NOTE: these models have RANDOM weights (no pretrained weights can be downloaded here): the boxes are "
        "meaningless; the demo shows the pipeline working end to end, not detection quality."
    )
    return 0


def dj_op_path(args: argparse.Namespace) -> int:
    """The file to list under Data-Juicer's custom_operator_paths (not imported here: it needs data_juicer)."""
    print(Path(__file__).resolve().parent / "adapters" / "data_juicer_op.py")
    return 0


def _engine_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--precision",
        help="banded, int8, fp32, or per model, e.g. fastsam=fp32,clip=banded,blip=int8 (default: the model folder's "
        "recommendation written by `validate --write`, else banded: CLIP and BLIP int8 with fp32 for scores near a "
        "threshold, FastSAM fp32; int8 = fastest, fp32 = reference)",
    )
    p.add_argument("--workers", type=int, default=ENGINE.workers,
                   help="model calls run at once (0 = one per core, or 1 when --threads is given); cores used = workers x threads")
    p.add_argument("--threads", type=int, default=ENGINE.threads, help="onnxruntime threads per model call (0 = 1 per worker, or cores / --workers)")
    _crop_batch_option(p)
    p.add_argument("--model-check", choices=MODEL_CHECKS, default=ENGINE.model_check,
                   help="model files against the manifest: sha256 once per file version (default), at every start, or sizes only")
    p.add_argument("--jpeg-roundtrip", action="store_true", help="D2 compatibility: crops through JPEG like Data-Juicer's cache")
    p.add_argument("--memory-release", choices=MEMORY_RELEASE, default=ENGINE.memory_release,
                   help="freed memory back to the system after each stage (trim, default), also every large buffer at once "
                   "(mmap: lowest peak, more CPU time; less with GLIBC_TUNABLES=glibc.malloc.hugetlb=1), or not at all (off)")
    p.add_argument("--segment-together", action="store_true",
                   help="FastSAM's two images at once, one per worker (less FastSAM CPU time, ~300 MB more peak at 1024 px); "
                   "default: one after the other on every core")
    p.add_argument("--quiet", action="store_true", help="warnings and errors only, no progress bar")


def _crop_batch_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--crop-batch-size", type=int, default=ENGINE.crop_batch_size,
                   help=f"crops per model call on batch-invariant graphs (default {ENGINE.crop_batch_size})")


def _tuning_commands(command: Callable[..., argparse.ArgumentParser]) -> None:
    """`retune` and `sweep`: decisions again from a --keep-scores run's scores."""
    t = command("retune", help="decide a --keep-scores run again at other similarity / ITM thresholds, without the models")
    t.add_argument("--input", type=Path, required=True, help="results JSONL of `run --keep-scores` (its scores are in INPUT.scores/), or the results folder of such a run on shards")
    t.add_argument("--params", type=Path, required=True, help="the new thresholds: JSON or YAML with Data-Juicer's parameter dicts, or a recipe")
    t.add_argument("--output", type=Path, required=True, help="JSONL results (a folder for a folder), as `run` with --params would write them")
    t.add_argument("--overwrite", action="store_true", help="replace an existing results file")
    t.add_argument("--models", type=Path, help="the run's model folder, if it moved (for the few fp32 scores a banded model needs)")
    t.add_argument("--quiet", action="store_true", help="warnings and errors only, no progress bar")
    w = command("sweep", help="pairs kept, boxes per pair and exit reasons over a grid of one or two thresholds of a --keep-scores run")
    w.add_argument("--input", type=Path, required=True, help="results JSONL of `run --keep-scores`, or the results folder of such a run on shards")
    w.add_argument("--vary", action="append", required=True, metavar="NAME=START:STOP:STEP",
                   help="a threshold and its grid, e.g. max_score_2=0.80:1.00:0.02 (once or twice)")
    w.add_argument("--out", type=Path, required=True, help="folder for sweep.csv, sweep.md, sweep.png, sweep.json")
    w.add_argument("--params", type=Path, help="the other thresholds (default: the run's)")
    w.add_argument("--quiet", action="store_true", help="warnings and errors only, no progress bar")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="python -m imgdiff_onnx", description="Img-Diff difference areas on onnxruntime.")
    parser.add_argument("--version", action="version", version=f"imgdiff_onnx {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help=f"show tracebacks instead of one-line errors (or set {DEBUG_ENV}=1)")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, **kwargs: object) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], **kwargs)  # type: ignore[arg-type]

    r = command("run", help="process a dataset of pairs: a JSONL file, or Parquet / WebDataset shards (resumable)")
    r.add_argument("--models", type=Path, required=True, help="model folder written by the export step")
    r.add_argument("--input", type=Path, required=True,
                   help="JSONL: caption1, caption2, image_path1, image_path2 (+ objects1/2); or shards: a .parquet or .tar file, "
                   "a folder of them, a glob or a brace range (shards-{00000..00099}.tar)")
    r.add_argument("--output", type=Path, required=True,
                   help="JSONL results, one line per input line, in order; for shards a folder: one results file per shard")
    r.add_argument("--columns", metavar="FIELD=COLUMN,...",
                   help="shards: the columns (Parquet) or fields (WebDataset) holding image_path1, image_path2, caption1, caption2, "
                   "objects1, objects2, id, where they are named otherwise (default: those names; WebDataset images img1, img2)")
    r.add_argument("--image-root", type=Path, help="Parquet image columns holding relative paths: resolve them here (default: the Parquet file's folder)")
    r.add_argument("--output-format", choices=("jsonl", "parquet"), help="shards: each shard's results file as JSON Lines (default) or Parquet")
    r.add_argument("--params", type=Path, help="JSON or YAML file with Data-Juicer's three parameter dicts (or a Data-Juicer "
                   "recipe), or the name of a shipped recipe: img_diff_onnx (the published Img-Diff thresholds)")
    r.add_argument("--limit", type=int, help="process at most the first N input lines")
    r.add_argument("--pairs-per-batch", type=int, default=PAIRS_PER_BATCH, help=f"pairs whose crops are scored together (default {PAIRS_PER_BATCH})")
    existing = r.add_mutually_exclusive_group()
    existing.add_argument("--resume", action="store_true", help="continue an interrupted run after its last complete line")
    existing.add_argument("--overwrite", action="store_true", help="replace an existing output file (only once start-up checks pass)")
    r.add_argument("--timings", action="store_true", help="add per-stage seconds to each result line")
    r.add_argument("--keep-scores", action="store_true",
                   help="keep every score beside the results (OUTPUT.scores/), computed with every gate open, so that `retune` and "
                   "`sweep` change the similarity and ITM thresholds later without a model call (costs a run with open gates)")
    r.add_argument("--band-switch", action="store_true",
                   help="a banded model whose fp32 re-scores cost more than fp32 alone runs fp32 for the rest of the run (the same "
                   "decisions; the results lines' band tallies then depend on timings)")
    r.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                   help="run on Ray actors: no ADDRESS starts a local Ray, 'auto' or host:port joins a cluster (needs the ray extra)")
    r.add_argument("--actors", type=int, default=1, help="with --ray: engine actors, each with --threads threads (default 1)")
    r.add_argument("--ray-num-cpus", type=int, help="with --ray and no ADDRESS: CPUs the local Ray grants (default all)")
    _engine_options(r)
    k = command("pack", help="turn a JSONL dataset and its image files into Parquet or WebDataset shards holding the image bytes")
    k.add_argument("--input", type=Path, required=True, help="JSONL records naming image files (as for run)")
    k.add_argument("--out", type=Path, required=True, help="a new or empty folder for the shards (00000.parquet, ... or 00000.tar, ...)")
    k.add_argument("--format", choices=("parquet", "webdataset"), default="parquet", help="shard format (default parquet)")
    k.add_argument("--pairs-per-shard", type=int, default=PAIRS_PER_SHARD, help=f"records per shard (default {PAIRS_PER_SHARD})")
    k.add_argument("--quiet", action="store_true", help="warnings and errors only, no progress bar")
    _tuning_commands(command)
    v = command("validate", help="measure what int8 changes on your own pairs and recommend a precision per model")
    v.add_argument("--models", type=Path, required=True, help="model folder with fp32 and int8 graphs")
    v.add_argument("--input", type=Path, required=True, help="your pairs: a JSONL file or shards (as for run)")
    v.add_argument("--out", type=Path, required=True, help="folder for validation.json, validation.md, validation.png")
    v.add_argument("--params", type=Path, help="your thresholds: JSON or YAML with Data-Juicer's three parameter dicts")
    v.add_argument("--limit", type=int, help="validate on the first N input lines")
    v.add_argument("--min-box-f1", type=float, default=0.99, help="final-box F1 vs fp32 an int8 graph must keep (default 0.99)")
    v.add_argument("--min-candidate-f1", type=float, default=0.99, help="FastSAM candidate-box F1 vs fp32 int8 must keep (default 0.99)")
    v.add_argument("--min-saving", type=float, default=0.05, help="CPU-time saving an int8 graph must bring (default 0.05)")
    v.add_argument("--write", action="store_true", help="store the recommended precision in the model folder's manifest")
    v.add_argument("--threads", type=int, default=ENGINE.threads, help="onnxruntime threads per model call (0 = one model call per core at once; N = one call at a time on N threads)")
    _crop_batch_option(v)
    v.add_argument("--quiet", action="store_true", help="warnings and errors only, no progress bar")
    s = command("show", help="a report to review a results file: index.html with both images, numbered boxes, filters")
    s.add_argument("--input", type=Path, required=True, help="results JSONL from `run`")
    s.add_argument("--out", type=Path, required=True, help="folder for index.html and its scaled pictures (img/)")
    s.add_argument("--limit", type=int, help="show at most the first N result lines")
    s.add_argument("--single-file", action="store_true", help="put the pictures inside index.html (for sharing small reports)")
    s.add_argument("--sweep", type=Path, help="a folder written by `sweep`: its table and plot open the report")
    s.add_argument("--quiet", action="store_true")
    d = command("demo", help="offline demo: random-init models, generated sample pairs, results and report")
    d.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder (default demo_out)")
    d.add_argument("--models", type=Path, help="use this model folder instead of exporting one")
    d.add_argument("--size", choices=("tiny", "full"), default="tiny", help="random-init model size to export (default tiny)")
    d.add_argument("--pairs", type=int, default=4, help="number of generated sample pairs (default 4)")
    _engine_options(d)
    command("dj-op-path", help="print the Data-Juicer operator file for custom_operator_paths")
    sub.add_parser("export", help="the export step (same as python -m imgdiff_onnx.export; needs the export extra)", add_help=False)
    return parser


DEBUG_ENV = "IMGDIFF_ONNX_DEBUG"  # set to 1 for tracebacks instead of one-line errors
INTERRUPTED = {  # what a command stopped at once (a second Ctrl-C) leaves, and what to run next
    "run": "every result line written so far is kept; run the same command with --resume to continue",
    "retune": "nothing of this retune was kept; run the same command again",
    "sweep": "the sweep wrote nothing; run the same command again",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "export":
        from .export import main as export_main

        return export_main(argv[1:])
    args = build_parser().parse_args(argv)
    _configure_logging(getattr(args, "quiet", False))
    from .errors import ImgDiffError
    from .runs.signals import Interrupted

    debug = args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        return {"run": run, "pack": pack, "retune": retune, "sweep": sweep, "validate": validate, "show": show, "demo": demo, "dj-op-path": dj_op_path}[args.command](args)
    except Interrupted as exc:
        print(f"{exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"interrupted: {INTERRUPTED.get(args.command, 'run the same command again')}", file=sys.stderr)
        return 130
    except (ImgDiffError, FileNotFoundError) as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
