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
    data = json.dumps({"source": source, "gap": GAP, "palette": ["#%02x%02x%02x" % c for c in PALETTE], "pairs": entries},
                      ensure_ascii=False, separators=(",", ":")).replace("</", "<\\/")  # fmt: skip
    return PAGE.replace("__SWEEP__", sweep_html).replace("__TITLE__", html.escape(Path(source).name)).replace("__DATA__", data)


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>imgdiff_onnx: __TITLE__</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font-family:system-ui,sans-serif;margin:0;color:#222;background:#fafafa}
header{padding:.6em 1em;background:#263238;color:#fff}header h1{font-size:1.2em;margin:0}
main{padding:0 1em 2em}section{margin:1em 0}
.summary{display:flex;flex-wrap:wrap;gap:1.5em}.summary>div{background:#fff;border:1px solid #ddd;padding:.6em .8em;border-radius:4px}
.summary h2{font-size:1em;margin:.2em 0 .4em}table{border-collapse:collapse}td,th{padding:2px 8px;text-align:left;font-size:90%}
th{border-bottom:1px solid #ccc}.num{text-align:right}
.controls{position:sticky;top:0;background:#fafafa;padding:.5em 0;border-bottom:1px solid #ddd;z-index:2}
.controls label{margin-right:1em}.pager button{margin:0 .2em}
.card{background:#fff;border:1px solid #ddd;border-radius:4px;margin:1em 0;padding:.6em .8em}
.card h3{font-size:1em;margin:.1em 0 .4em}.status-error h3{color:#b00020}.meta{font-size:85%;color:#555;margin:.3em 0}
.pic{position:relative;display:inline-block;line-height:0}.pic img{display:block}.pic svg{position:absolute;left:0;top:0}
.swatch{display:inline-block;width:1.6em;text-align:center;color:#fff;font-weight:bold;border-radius:3px}
.err{color:#b00020}.reason{color:#8a6d00}
.card.focus g.box:not(.hl){opacity:.15}.card.focus tr[data-k]:not(.hl){opacity:.35}
g.box.hl rect:first-child{stroke-width:4}tr[data-k]{cursor:pointer}tr[data-k].hl{background:#fff3c4}
.pic.zoomed{zoom:2}.zoom{font-size:80%;margin-left:.5em}
</style></head>
<body><header><h1>imgdiff_onnx results: __TITLE__</h1></header>
<main>
__SWEEP__
<section class="summary" id="summary"></section>
<section class="controls" id="controls">
<label>status <select id="f-status"><option value="all">all</option><option value="ok">ok</option><option value="error">error</option></select></label>
<label>exit reason <select id="f-reason"><option value="all">all</option></select></label>
<label>boxes &ge; <input id="f-minboxes" type="number" min="0" value="0" style="width:4em"></label>
<label>sort <select id="f-sort"><option value="line">input order</option><option value="boxes-desc">most boxes</option><option value="boxes-asc">fewest boxes</option></select></label>
<label>per page <select id="f-per"><option>10</option><option selected>25</option><option>100</option></select></label>
<span class="pager" id="pager"></span> <span id="shown"></span>
</section>
<section id="cards"></section>
</main>
<script id="data" type="application/json">__DATA__</script>
<script>
"use strict";
const DATA = JSON.parse(document.getElementById("data").textContent);
const PAIRS = DATA.pairs, PAL = DATA.palette;
const colour = k => PAL[(k - 1) % PAL.length];
const esc = s => String(s === null || s === undefined ? "" : s).replace(/[&<>"']/g, c => ({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;","'":"&#39;"}[c]));
const reasonKey = p => p.status !== "ok" ? "error: the record could not be processed"
  : !p.reason ? "went through every gate"
  : p.reason.startsWith("pair similarity") ? "stopped by the image-pair similarity gate"
  : p.reason.startsWith("no object words") ? "no object words: the captions name no object that differs"
  : p.reason.split(":")[0];
const DEFAULTS = {status: "all", reason: "all", minboxes: "0", sort: "line", per: "25", page: "1"};

function state() {
  const s = Object.assign({}, DEFAULTS);
  for (const part of location.hash.replace(/^#/, "").split("&")) {
    if (!part) continue;
    const [k, v] = part.split("=");
    if (k in s) s[k] = decodeURIComponent(v || "");
  }
  return s;
}
function setState(changes) {
  const s = Object.assign(state(), changes);
  location.hash = Object.keys(s).filter(k => s[k] !== DEFAULTS[k]).map(k => k + "=" + encodeURIComponent(s[k])).join("&");
}

function histogram(values, bins, lo, hi, title) {
  const counts = new Array(bins).fill(0);
  for (const v of values) counts[Math.min(bins - 1, Math.max(0, Math.floor((v - lo) / (hi - lo) * bins)))]++;
  const max = Math.max(1, ...counts), W = 220, H = 70, bw = W / bins;
  let bars = counts.map((c, i) => `<rect x="${i * bw + 0.5}" y="${H - c / max * H}" width="${bw - 1}" height="${c / max * H}" fill="#546e7a"><title>${(lo + i * (hi - lo) / bins).toFixed(2)}: ${c}</title></rect>`).join("");
  return `<div><h2>${esc(title)}</h2><svg class="hist" width="${W}" height="${H + 14}">${bars}<text x="0" y="${H + 12}" font-size="10">${lo}</text><text x="${W - 14}" y="${H + 12}" font-size="10">${hi}</text></svg><div class="meta">${values.length} values</div></div>`;
}

function summary() {
  const byStatus = {}, byReason = {}, boxCounts = [], itm = [], sims = [];
  for (const p of PAIRS) {
    byStatus[p.status] = (byStatus[p.status] || 0) + 1;
    const r = reasonKey(p); byReason[r] = (byReason[r] || 0) + 1;
    if (p.status === "ok") boxCounts.push(p.boxes.length);
    for (const e of p.evidence) { itm.push(e.itm1, e.itm2); sims.push(e.crop_similarity); }
  }
  const rows = o => Object.entries(o).sort((a, b) => b[1] - a[1]).map(([k, v]) => `<tr><td>${esc(k)}</td><td class="num">${v}</td></tr>`).join("");
  const total = boxCounts.reduce((a, b) => a + b, 0);
  document.getElementById("summary").innerHTML =
    `<div><h2>pairs by status</h2><table id="by-status">${rows(byStatus)}<tr><th>all</th><th class="num">${PAIRS.length}</th></tr></table></div>` +
    `<div><h2>exit reasons</h2><table id="by-reason">${rows(byReason)}</table></div>` +
    `<div><h2>boxes</h2><table><tr><td>total</td><td class="num" id="total-boxes">${total}</td></tr><tr><td>pairs with boxes</td><td class="num">${boxCounts.filter(n => n > 0).length}</td></tr><tr><td>most in one pair</td><td class="num">${boxCounts.length ? Math.max(...boxCounts) : 0}</td></tr></table></div>` +
    histogram(boxCounts, 10, 0, Math.max(10, ...boxCounts), "boxes per pair") +
    histogram(itm, 10, 0, 1, "ITM probability of kept boxes") +
    histogram(sims, 10, -1, 1, "crop-pair similarity of kept boxes");
  const reasons = document.getElementById("f-reason");
  for (const r of Object.keys(byReason).sort()) reasons.insertAdjacentHTML("beforeend", `<option value="${esc(r)}">${esc(r)}</option>`);
}

function card(p) {
  let body = "";
  if (p.status !== "ok") {
    body = `<p class="err">error: ${esc(p.error)}</p>`;
  } else {
    if (p.img) {
      const s = p.scale, off = p.w + DATA.gap;
      let rects = "";
      p.boxes.forEach((b, i) => {
        const k = i + 1, x = (b[0] - b[2] / 2) * s, y = (b[1] - b[3] / 2) * s, w = b[2] * s, h = b[3] * s;
        for (const dx of [0, off]) {
          rects += `<g class="box" data-k="${k}"><rect x="${x + dx + 1}" y="${y + 1}" width="${Math.max(1, w - 2)}" height="${Math.max(1, h - 2)}" fill="none" stroke="${colour(k)}" stroke-width="2"/>` +
                   `<rect x="${x + dx}" y="${y}" width="${String(k).length * 7 + 6}" height="13" fill="${colour(k)}"/><text x="${x + dx + 3}" y="${y + 10}" font-size="11" font-weight="bold" fill="#000">${k}</text></g>`;
        }
      });
      body += `<button class="zoom" data-zoom="1">zoom</button><br><div class="pic"><img src="${p.img}" width="${2 * p.w + DATA.gap}" height="${p.h}" alt="pair ${esc(p.id)}"><svg width="${2 * p.w + DATA.gap}" height="${p.h}">${rects}</svg></div>`;
    } else if (p.picture_error) {
      body += `<p class="err">${esc(p.picture_error)}</p>`;
    }
    body += `<p class="meta">${esc(p.captions[0])} | ${esc(p.captions[1])}</p>`;
    body += `<p class="meta">object words: ${esc((p.objects[0] || []).join(", ") || "none")} | ${esc((p.objects[1] || []).join(", ") || "none")}; pair similarity ${p.similarity === null ? "-" : p.similarity.toFixed(4)}; ${p.boxes.length} of ${p.counts.candidates || 0} candidates kept</p>`;
    if (p.reason) body += `<p class="meta reason">stopped: ${esc(p.reason)}</p>`;
    else body += `<p class="meta gates">${esc(gateChain(p.counts))}</p>`;
    if (p.evidence.length) {
      body += `<table class="legend"><tr><th>#</th><th>found in</th><th>image 1 word</th><th class="num">ITM</th><th>image 2 word</th><th class="num">ITM</th><th class="num">crop similarity</th></tr>` +
        p.evidence.map((e, i) => `<tr data-k="${i + 1}"><td><span class="swatch" style="background:${colour(i + 1)}">${i + 1}</span></td><td>image ${e.source}</td><td>${esc(e.word1)}</td><td class="num">${e.itm1.toFixed(3)}</td><td>${esc(e.word2)}</td><td class="num">${e.itm2.toFixed(3)}</td><td class="num">${e.crop_similarity.toFixed(3)}</td></tr>`).join("") + `</table>`;
    }
  }
  return `<div class="card status-${esc(p.status)}" data-line="${p.n}" data-boxes="${p.boxes.length}"><h3>${esc(p.id)} <span class="meta">line ${p.n}, ${esc(p.status)}</span></h3>${body}</div>`;
}

function gateChain(c) {
  // the pair's own path through the gates, from its counts
  const steps = [["unique_windows", "crop windows"], ["after_crop_pair_gate", "after the crop-pair similarity gate"],
                 ["after_itm_image1", "after image-text matching on image 1"], ["after_itm_image2", "after image-text matching on image 2"],
                 ["kept", "kept after overlap removal"]];
  return steps.filter(([k]) => k in c).map(([k, what]) => `${c[k]} ${what}`).join(" \u2192 ");
}

function highlight(cardEl, k) {
  // box k of a card (on both pictures, and its legend row) stands out; the others dim. null: none
  cardEl.classList.toggle("focus", k !== null);
  for (const el of cardEl.querySelectorAll("[data-k]")) el.classList.toggle("hl", el.dataset.k === k);
}

function wireHighlights(cards) {
  const target = ev => [ev.target.closest(".card"), ev.target.closest("[data-k]")];
  cards.addEventListener("mouseover", ev => {
    const [c, t] = target(ev);
    if (c && !c.dataset.pinned) highlight(c, t ? t.dataset.k : null);
  });
  cards.addEventListener("mouseout", ev => {
    const [c] = target(ev);
    if (c && !c.dataset.pinned && !c.contains(ev.relatedTarget)) highlight(c, null);
  });
  cards.addEventListener("click", ev => {
    const [c, t] = target(ev);
    if (!c) return;
    if (ev.target.dataset.zoom) { c.querySelector(".pic").classList.toggle("zoomed"); return; }
    if (!t) return;
    if (c.dataset.pinned === t.dataset.k) { delete c.dataset.pinned; highlight(c, null); }
    else { c.dataset.pinned = t.dataset.k; highlight(c, t.dataset.k); }  // a click keeps the box highlighted
  });
}

function render() {
  const s = state();
  for (const k of ["status", "reason", "minboxes", "sort", "per"]) document.getElementById("f-" + k).value = s[k];
  const min = Number(s.minboxes) || 0;
  let rows = PAIRS.filter(p => (s.status === "all" || p.status === s.status) && (s.reason === "all" || reasonKey(p) === s.reason) && p.boxes.length >= min);
  if (s.sort === "boxes-desc") rows = rows.slice().sort((a, b) => b.boxes.length - a.boxes.length || a.n - b.n);
  if (s.sort === "boxes-asc") rows = rows.slice().sort((a, b) => a.boxes.length - b.boxes.length || a.n - b.n);
  const per = Number(s.per) || 25, pages = Math.max(1, Math.ceil(rows.length / per)), page = Math.min(pages, Math.max(1, Number(s.page) || 1));
  document.getElementById("cards").innerHTML = rows.slice((page - 1) * per, page * per).map(card).join("");
  document.getElementById("shown").textContent = `${rows.length} of ${PAIRS.length} pairs`;
  document.getElementById("pager").innerHTML = `<button id="prev" ${page <= 1 ? "disabled" : ""}>&lt;</button> page <b id="page">${page}</b> of <b id="pages">${pages}</b> <button id="next" ${page >= pages ? "disabled" : ""}>&gt;</button>`;
  document.getElementById("prev").onclick = () => setState({page: String(page - 1)});
  document.getElementById("next").onclick = () => setState({page: String(page + 1)});
}

summary();
for (const k of ["status", "reason", "minboxes", "sort", "per"]) {
  document.getElementById("f-" + k).addEventListener("change", ev => setState({[k]: ev.target.value, page: "1"}));
}
window.addEventListener("hashchange", render);
wireHighlights(document.getElementById("cards"));
render();
document.body.dataset.ready = "1";
</script></body></html>
"""
