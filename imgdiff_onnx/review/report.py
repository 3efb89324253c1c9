"""The review report of a results file (or a shard run's results folder): `python -m imgdiff_onnx show --input results.jsonl --out DIR`.

DIR/index.html is one page with everything inline (styles, script, the results as JSON; nothing
fetched from the network): a summary (pairs by status and exit reason, boxes per pair, histograms
of the ITM probabilities and crop-pair similarities of the kept boxes), filters and sorting (status,
exit reason, box count), paging, and per pair both images side by side with the same numbered,
coloured boxes (drawn by the page over the pictures) and a legend row per box: the matched words,
their probabilities, the crop-pair similarity. Pointing at a box or its legend row highlights it on
both pictures and dims the others (a click keeps it; a second click lets go), for busy pairs; a
zoom button doubles a pair's pictures; a pair that went through every gate says how many of its
crop windows each gate passed. The pictures are JPEGs scaled for the page in
DIR/img/ (so a 10,000-pair report stays light), or inside the page with `--single-file`.

The page's state lives in its address (#status=error&sort=boxes-desc&page=3): links to a view can
be shared, and the browser test drives the page through it.
"""

from __future__ import annotations

import base64
import html
from importlib import resources
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..runs import outfolder
from .drawing import GAP, PALETTE, side_by_side
from ..errors import RunError
from ..imageio import ImageLoadError, load_image
from ..runs.shard_results import ShardImages, is_results_folder, results_rows, row_key
from ..runs.shards import ShardError
from ..runs.progress import ProgressBar
from ..runs.records import RESULT_KEY

log = logging.getLogger(__name__)

THUMB_WIDTH = 420  # pixels per image in the page
JPEG_QUALITY = 85


def read_results(path: Path, limit: int | None = None) -> list[tuple[int, dict]]:
    """(line number, record) of every result line; refuses a file that is not a results file. A
    shard run's output folder gives its rows in shard order, numbered 1, 2, ... across shards."""
    if is_results_folder(path):
        rows = []
        for number, (_, row) in enumerate(results_rows(path), start=1):
            if limit is not None and len(rows) >= limit:
                break
            rows.append((number, row))
        if not rows:
            raise RunError(f"{path}: no shard has committed results yet")
        return rows
    if not path.is_file():
        raise RunError(f"--input {path}: no such results file")
    rows: list[tuple[int, dict]] = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, text in enumerate(handle, start=1):
            if limit is not None and len(rows) >= limit:
                break
            if not text.strip():
                continue
            try:
                record = json.loads(text)
                result = record[RESULT_KEY]
                ok = isinstance(result, dict) and "status" in result and "line" in result
            except (ValueError, KeyError, TypeError):
                ok = False
            if not ok:
                if not rows:
                    raise RunError(f"{path} is not a results file of `run`: line {number} has no '{RESULT_KEY}' result "
                                   "(give the --output file of `python -m imgdiff_onnx run`)")  # fmt: skip
                log.warning("%s line %d: not a result line (torn or edited?), skipped", path, number)
                continue
            rows.append((number, record))
    if not rows:
        raise RunError(f"{path} is empty: no results to show")
    return rows


def _thumbnail(images: tuple[object, object], width: int) -> tuple[np.ndarray, float]:
    """Both images (paths or ImageBytes) side by side scaled so that each is at most `width` wide; and the scale."""
    img1, img2 = (load_image(image).rgb for image in images)
    h, w = img1.shape[:2]
    img2 = cv2.resize(img2, (w, h), interpolation=cv2.INTER_AREA) if img2.shape[:2] != (h, w) else img2
    scale = min(1.0, width / w)
    if scale < 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        img1, img2 = (cv2.resize(im, size, interpolation=cv2.INTER_AREA) for im in (img1, img2))
    return side_by_side(img1, img2), scale


def _entry(number: int, record: dict, folder: bool) -> dict[str, Any]:
    result = record[RESULT_KEY]
    boxes = result.get("boxes") or []
    return {
        "n": number if folder else result.get("line", number),
        "id": row_key(record) if folder else str(record.get("id", f"line {result.get('line', number)}")),
        "status": result.get("status"),
        "error": result.get("error"),
        "reason": result.get("exit_reason"),
        "captions": [record.get("caption1"), record.get("caption2")],
        "objects": [result.get("objects1"), result.get("objects2")],
        "similarity": result.get("pair_similarity"),
        "counts": result.get("counts") or {},
        "boxes": boxes,
        "evidence": result.get("evidence") or [],
    }


def write_report(results: Path, out: Path, limit: int | None = None, single_file: bool = False, thumb_width: int = THUMB_WIDTH,
                 progress: bool = True, sweep: Path | None = None) -> Path:  # fmt: skip
    """Write DIR/index.html (+ DIR/img/*.jpg unless single_file); returns the index path. With
    `sweep` (a folder written by `sweep`), the report opens with its table and plot."""
    rows = read_results(Path(results), limit)
    shard_images = ShardImages(Path(results)) if is_results_folder(Path(results)) else None
    sweep_html = sweep_section(sweep) if sweep is not None else ""
    outfolder.prepare(out, "report")
    images = out / "img"
    if images.exists():
        shutil.rmtree(images)  # pictures of an earlier report (claimed: every one listed, unchanged) must not linger
    if not single_file:
        images.mkdir()
    try:
        index = _write_pages(results, out, rows, shard_images, single_file, thumb_width, progress, sweep_html)
    finally:  # what was written, even by a report that failed half-way, is listed as this report's
        outfolder.record(out, "report", [p for p in (out / "index.html", *sorted(images.glob("*"))) if p.is_file()])
    return index


def _write_pages(results: Path, out: Path, rows: list, shard_images: ShardImages | None, single_file: bool, thumb_width: int,
                 progress: bool, sweep_html: str) -> Path:  # fmt: skip
    images = out / "img"
    bar = ProgressBar(len(rows), progress, desc="report")
    entries = []
    for number, record in rows:
        entry = _entry(number, record, shard_images is not None)
        result = record[RESULT_KEY]
        if entry["status"] == "ok":
            try:
                if shard_images is not None and "source" in result:
                    pair = shard_images.pair(result["source"])
                else:
                    pair = (result["image_path1_resolved"], result["image_path2_resolved"])
                picture, scale = _thumbnail(pair, thumb_width)
            except (ImageLoadError, ShardError, KeyError) as exc:
                entry["picture_error"] = f"cannot draw: {exc}"
            else:
                ok, jpeg = cv2.imencode(".jpg", picture[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
                assert ok
                if single_file:
                    entry["img"] = "data:image/jpeg;base64," + base64.b64encode(jpeg.tobytes()).decode("ascii")
                else:
                    name = f"{entry['n']:07d}.jpg"
                    (images / name).write_bytes(jpeg.tobytes())
                    entry["img"] = f"img/{name}"
                h = picture.shape[0]
                w = (picture.shape[1] - GAP) // 2
                entry.update(w=w, h=h, scale=scale)
        entries.append(entry)
        bar.update(1)
    bar.close()
    index = out / "index.html"
    index.write_text(_page(str(results), entries, sweep_html), encoding="utf-8")
    return index


def sweep_section(folder: Path) -> str:
    """The report's section for a sweep: its plot (inline) and its table."""
    try:
        data = json.loads((folder / "sweep.json").read_text(encoding="utf-8"))
        plot = base64.b64encode((folder / "sweep.png").read_bytes()).decode("ascii")
    except (OSError, ValueError) as exc:
        raise RunError(f"--sweep {folder}: not a folder written by `sweep` ({exc})") from None
    rows = data.get("rows", [])
    kinds = sorted({k for row in rows for k in row.get("exits", {})})
    head = list(data.get("axes", [])) + ["pairs with boxes", "boxes per pair", "int8 in band"] + [f"exit: {k}" for k in kinds]
    body = []
    for row in rows:
        cells = [row.get(a) for a in data.get("axes", [])]
        cells += ["invalid"] * (3 + len(kinds)) if row.get("invalid") else [row["pairs_with_boxes"], row["boxes_per_pair"], row["int8_in_band"]] + [row["exits"].get(k, 0) for k in kinds]
        body.append("<tr>" + "".join(f'<td class="num">{html.escape(str(c))}</td>' for c in cells) + "</tr>")
    title = html.escape(" x ".join(data.get("axes", [])))
    return (f'<section class="sweep" id="sweep"><h2>Threshold sweep: {title}</h2><img alt="sweep plot" src="data:image/png;base64,{plot}">'
            f'<table><tr>{"".join(f"<th>{html.escape(h)}</th>" for h in head)}</tr>{"".join(body)}</table></section>')  # fmt: skip


def _page(source: str, entries: list[dict], sweep_html: str = "") -> str:
    """The report page: the package's page template (review/page/: HTML, CSS and JavaScript, one
    file each) with the pairs' data filled in, as one self-contained file."""
    data = json.dumps({"source": source, "gap": GAP, "palette": ["#%02x%02x%02x" % c for c in PALETTE], "pairs": entries},
                      ensure_ascii=False, separators=(",", ":")).replace("</", "<\\/")  # fmt: skip
    template = _template("report.html").replace("__STYLE__", _template("report.css")).replace("__SCRIPT__", _template("report.js"))
    return template.replace("__SWEEP__", sweep_html).replace("__TITLE__", html.escape(Path(source).name)).replace("__DATA__", data)


def _template(name: str) -> str:
    return (resources.files(__package__) / "page" / name).read_text(encoding="utf-8")
