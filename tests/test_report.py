"""The review report, rendered by a real browser (headless Chromium from the Debian packages).

The page is driven two ways: through its address (#status=error&page=2, how views are shared)
and through its controls (a harness page changes the <select>s and reads the report's DOM, as a
user's clicks would). A screenshot is kept in test-output/ for a human look.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
from urllib.parse import quote
import subprocess
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from imgdiff_onnx.errors import RunError
from imgdiff_onnx.review.report import read_results, write_report

from .conftest import DATA, ROOT
from .cli_helpers import _cli

EVIDENCE = {"candidate": 0, "source": 1, "word1": "plane", "itm1": 0.91, "word2": "boat", "itm2": 0.87, "crop_similarity": 0.42}


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    if os.environ.get("CI"):
        raise AssertionError("CI must install chromium (apt-get install chromium): the report is tested in a real browser")
    pytest.skip("no chromium on this machine (apt-get install chromium)")


def _browser(*args: str, url: str) -> str:
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=5000", *args, url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def _dom(index: Path, hash_: str = "") -> str:
    dom = _browser("--dump-dom", url=index.as_uri() + (f"#{hash_}" if hash_ else ""))
    assert 'data-ready="1"' in dom, "the page's script did not finish"
    return re.sub(r"<script.*?</script>", "", dom, flags=re.S)  # the data and code, not the rendered page


def _cards(dom: str) -> list[dict]:
    out = []
    for m in re.finditer(r'<div class="card status-(\w+)" data-line="(\d+)" data-boxes="(\d+)">(.*?)(?=<div class="card |</section>)', dom, re.S):
        out.append({"status": m[1], "line": int(m[2]), "boxes": int(m[3]), "drawn": m[4].count('<g class="box"'), "legend": m[4].count('class="swatch"')})
    return out


def _row(n: int, boxes: int, image1: Path, image2: Path, status: str = "ok", reason: str | None = None) -> dict:
    result: dict = {"line": n, "input_digest": "x", "status": status}
    if status == "ok":
        result.update(image_path1_resolved=str(image1), image_path2_resolved=str(image2), objects1=["plane"], objects2=["boat"],
                      pair_similarity=0.9, exit_reason=reason, counts={"candidates": boxes + 2, "unique_windows": boxes + 2, "after_crop_pair_gate": boxes + 1,
                      "after_itm_image1": boxes + 1, "after_itm_image2": boxes, "kept": boxes}, boxes=[[60.0 + 30 * k, 50.0, 40.0, 20.0] for k in range(boxes)],
                      evidence=[dict(EVIDENCE, candidate=k) for k in range(boxes)])  # fmt: skip
    else:
        result.update(error=f"p{n}: image 2: image not found", boxes=[])
    return {"id": f"p{n}", "caption1": "A plane <b>in</b> the sky.", "caption2": "A boat.", "imgdiff": result}


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    """13 pairs: box counts 0..4 cycling, every 5th an error, one stopped early; image 2 another size."""
    work = tmp_path_factory.mktemp("report")
    img1, img2 = work / "a.jpg", work / "b.png"
    shutil.copy(DATA / "pairs" / "img_pair_1.jpg", img1)
    pic = cv2.imread(str(DATA / "pairs" / "img_pair_2.jpg"))
    cv2.imwrite(str(img2), cv2.resize(pic, (pic.shape[1] // 2, pic.shape[0] // 3)))
    rows = []
    for n in range(1, 14):
        if n % 5 == 0:
            rows.append(_row(n, 0, img1, img2, status="error"))
        elif n == 7:
            rows.append(_row(n, 0, img1, img2, reason="no object words in caption 1: its differing words 'red' (adjective) are not nouns found only in it"))
        else:
            rows.append(_row(n, n % 5, img1, img2))
    results = work / "results.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return write_report(results, work / "report", progress=False)


def test_pictures_are_scaled_and_boxes_numbered_in_the_page(report):
    pictures = sorted((report.parent / "img").glob("*.jpg"))
    assert len(pictures) == 11  # one per ok pair
    h, w = cv2.imread(str(pictures[0])).shape[:2]
    src_h, src_w = cv2.imread(str(DATA / "pairs" / "img_pair_1.jpg")).shape[:2]
    assert w == 2 * 420 + 8 and h == round(src_h * 420 / src_w)
    dom = _dom(report)
    cards = _cards(dom)
    assert [c["line"] for c in cards] == list(range(1, 14))
    for c in cards:
        assert c["drawn"] == 2 * c["boxes"] and c["legend"] == c["boxes"]  # the same boxes on both images, one legend row each
    assert "13 of 13 pairs" in dom
    assert html.escape("A plane <b>in</b> the sky.") in dom  # captions shown as text, never as markup
    assert "stopped: no object words in caption 1: its differing words" in html.unescape(dom)
    assert re.search(r'id="total-boxes">(\d+)<', dom)[1] == str(sum(c["boxes"] for c in cards))


def test_filters_sorting_and_paging_through_the_address(report):
    errors = _cards(_dom(report, "status=error"))
    assert [c["line"] for c in errors] == [5, 10] and all(c["status"] == "error" for c in errors)
    most = _cards(_dom(report, "minboxes=3&sort=boxes-desc"))
    assert [c["boxes"] for c in most] == [4, 4, 3, 3, 3]
    assert [c["line"] for c in most] == [4, 9, 3, 8, 13]
    page2 = _cards(_dom(report, "per=10&page=2"))
    assert [c["line"] for c in page2] == [11, 12, 13]
    stopped = _cards(_dom(report, "reason=" + quote("no object words: the captions name no object that differs")))
    assert [c["line"] for c in stopped] == [7]
    through = _cards(_dom(report, "reason=" + quote("went through every gate")))  # the exit reasons' words a reader understands
    assert [c["line"] for c in through] == [n for n in range(1, 14) if n % 5 and n != 7]


HARNESS = """<!doctype html><meta charset="utf-8"><body><iframe id="r" src="REPORT" width="1200" height="900"></iframe><pre id="out"></pre>
<script>
const frame = document.getElementById("r");
frame.onload = () => {
  const d = frame.contentDocument, seen = {};
  const pick = (id, value) => { const el = d.getElementById(id); el.value = value; el.dispatchEvent(new Event("change")); };
  const cards = () => [...d.querySelectorAll("#cards .card")].map(c => Number(c.dataset.line));
  pick("f-status", "ok");
  setTimeout(() => {
    seen.ok = cards(); seen.hash = frame.contentWindow.location.hash;
    pick("f-per", "10");
    setTimeout(() => {
      d.getElementById("next").click();
      setTimeout(() => { seen.next = cards(); seen.page = d.getElementById("page").textContent;
                         document.getElementById("out").textContent = JSON.stringify(seen); }, 200);
    }, 200);
  }, 200);
};
</script>"""


def test_the_controls_filter_and_page_as_a_user_clicks(report, tmp_path):
    harness = report.parent / "harness.html"
    harness.write_text(HARNESS.replace("REPORT", "index.html"))
    dom = _browser("--allow-file-access-from-files", "--dump-dom", url=harness.as_uri())
    seen = json.loads(html.unescape(re.search(r'<pre id="out">(.*?)</pre>', dom, re.S)[1]))
    assert seen["ok"] == [n for n in range(1, 14) if n % 5]
    assert seen["hash"] == "#status=ok"
    assert seen["next"] == [13] and seen["page"] == "2"  # 11 ok pairs, 10 per page


HIGHLIGHT = """<!doctype html><meta charset="utf-8"><body><iframe id="r" src="REPORT#minboxes=4" width="1200" height="900"></iframe><pre id="out"></pre>
<script>
const frame = document.getElementById("r");
frame.onload = () => setTimeout(() => {
  const d = frame.contentDocument, w = frame.contentWindow, seen = {};
  const card = d.querySelector("#cards .card");
  const look = () => ({focus: card.classList.contains("focus"),
                       lit: [...card.querySelectorAll(".hl")].map(e => e.tagName.toLowerCase() + e.dataset.k),
                       dimmed: w.getComputedStyle(card.querySelector('g.box[data-k="1"]')).opacity});
  const row = k => card.querySelector(`tr[data-k="${k}"]`);
  row(2).dispatchEvent(new MouseEvent("mouseover", {bubbles: true}));
  seen.hover = look();
  row(3).click();
  row(1).dispatchEvent(new MouseEvent("mouseover", {bubbles: true}));
  seen.pinned = look();
  row(3).click();
  seen.released = look();
  card.querySelector("button.zoom").click();
  seen.zoomed = card.querySelector(".pic").classList.contains("zoomed");
  seen.gates = card.querySelector(".gates") ? card.querySelector(".gates").textContent : null;
  document.getElementById("out").textContent = JSON.stringify(seen);
}, 300);
</script>"""


def test_a_box_is_highlighted_on_both_pictures_and_the_rest_dimmed(report):
    harness = report.parent / "highlight.html"
    harness.write_text(HIGHLIGHT.replace("REPORT", "index.html"))
    dom = _browser("--allow-file-access-from-files", "--dump-dom", url=harness.as_uri())
    seen = json.loads(html.unescape(re.search(r'<pre id="out">(.*?)</pre>', dom, re.S)[1]))
    # pointing at legend row 2: box 2 on both pictures and its row stand out, box 1 is dimmed
    assert seen["hover"] == {"focus": True, "lit": ["g2", "g2", "tr2"], "dimmed": "0.15"}
    # a click on row 3 keeps box 3 highlighted while the pointer moves on; a second click lets go
    assert seen["pinned"]["lit"] == ["g3", "g3", "tr3"]
    assert seen["released"] == {"focus": False, "lit": [], "dimmed": "1"}
    assert seen["zoomed"] is True
    # the card says the pair's own path through the gates, from its counts
    assert seen["gates"] == ("6 crop windows \u2192 5 after the crop-pair similarity gate \u2192 5 after image-text matching on image 1 "
                             "\u2192 4 after image-text matching on image 2 \u2192 4 kept after overlap removal")


def test_screenshot_for_the_test_output(report):
    out = ROOT / "test-output"
    out.mkdir(exist_ok=True)
    shot = out / "report.png"
    shot.unlink(missing_ok=True)
    _browser("--window-size=1400,1800", f"--screenshot={shot}", url=report.as_uri() + "#per=10")
    picture = cv2.imread(str(shot))
    assert picture is not None and picture.shape[:2] == (1800, 1400)
    # the first pair's box 1 is drawn: its colour (PALETTE[0], BGR here) is on the screen
    assert np.any(np.all(picture == np.array([75, 25, 230], np.uint8), axis=2))


def test_ten_thousand_pairs_render_one_page(tmp_path):
    small = tmp_path / "s.png"
    cv2.imwrite(str(small), np.full((48, 64, 3), 90, np.uint8))
    rows = [_row(n, n % 3, small, small) if n % 7 else _row(n, 0, small, small, status="error") for n in range(1, 10_001)]
    results = tmp_path / "results.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in rows))
    index = write_report(results, tmp_path / "report", progress=False)
    started = time.perf_counter()
    dom = _dom(index, "sort=boxes-desc&page=7")
    seconds = time.perf_counter() - started
    cards = _cards(dom)
    assert len(cards) == 25 and all(c["boxes"] == 2 for c in cards)
    assert "10000 of 10000 pairs" in dom and 'id="pages">400<' in dom
    print(f"10,000-pair report: {index.stat().st_size / 1e6:.1f} MB page, rendered page 7 in {seconds:.1f} s (browser start included)")


def test_show_refuses_a_file_that_is_not_results(tmp_path):
    records = tmp_path / "pairs.jsonl"
    records.write_text(json.dumps({"caption1": "A cat.", "caption2": "A dog.", "image_path1": "a.jpg", "image_path2": "b.jpg"}) + "\n")
    with pytest.raises(RunError, match=r"is not a results file of `run`: line 1 has no 'imgdiff' result"):
        read_results(records)
    proc = _cli("show", "--input", str(records), "--out", str(tmp_path / "r"), check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "not a results file" in proc.stderr
    assert not (tmp_path / "r" / "index.html").exists()
    (tmp_path / "empty.jsonl").write_text("")
    assert _cli("show", "--input", str(tmp_path / "empty.jsonl"), "--out", str(tmp_path / "r"), check=False).returncode == 2
