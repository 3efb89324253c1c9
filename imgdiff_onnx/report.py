"""The visual report: each pair side by side with its boxes, and an index.html gallery."""

from __future__ import annotations

import html
import json
import logging
from pathlib import Path

import cv2
import numpy as np

from .imageio import ImageLoadError, load_image_file
from .jsonl import RESULT_KEY

log = logging.getLogger(__name__)

BOX_COLOUR = (0, 0, 255)  # BGR red
GAP = 8  # pixels between the two images


def draw_pair(image1: np.ndarray, image2: np.ndarray, boxes_xywh: list[list[float]], thickness: int = 2) -> np.ndarray:
    """BGR canvas: image 1 | image 2 (resized to image 1, as the engine sees it), boxes on both."""
    h, w = image1.shape[:2]
    if image2.shape[:2] != (h, w):
        image2 = cv2.resize(image2, (w, h), interpolation=cv2.INTER_LINEAR)
    canvas = np.full((h, 2 * w + GAP, 3), 255, np.uint8)
    canvas[:, :w] = image1[:, :, ::-1]
    canvas[:, w + GAP :] = image2[:, :, ::-1]
    for cx, cy, bw, bh in boxes_xywh:
        x1, y1, x2, y2 = int(round(cx - bw / 2)), int(round(cy - bh / 2)), int(round(cx + bw / 2)), int(round(cy + bh / 2))
        for offset in (0, w + GAP):
            for t in range(thickness):  # drawn inside the box: the outline's outer edge is the box edge
                cv2.rectangle(canvas, (x1 + offset + t, y1 + t), (x2 - 1 + offset - t, y2 - 1 - t), BOX_COLOUR, 1)
    return canvas


def write_report(results: Path, out: Path, limit: int | None = None) -> Path:
    """PNG per ok record plus index.html; returns the index path."""
    out.mkdir(parents=True, exist_ok=True)
    cards = []
    with open(results, encoding="utf-8") as handle:
        for i, text in enumerate(handle, start=1):
            if limit is not None and i > limit:
                break
            try:
                record = json.loads(text)
                result = record[RESULT_KEY]
            except (ValueError, KeyError, TypeError):
                log.warning("%s line %d: not a result line, skipped", results, i)
                continue
            title = html.escape(str(record.get("id", f"line {result.get('line', i)}")))
            if result.get("status") != "ok":
                cards.append(f"<div class='card'><h3>{title}</h3><p class='err'>error: {html.escape(str(result.get('error')))}</p></div>")
                continue
            try:
                img1 = load_image_file(result["image_path1_resolved"]).rgb
                img2 = load_image_file(result["image_path2_resolved"]).rgb
            except (ImageLoadError, KeyError) as exc:
                cards.append(f"<div class='card'><h3>{title}</h3><p class='err'>cannot draw: {html.escape(str(exc))}</p></div>")
                continue
            name = f"pair_{i:06d}.png"
            cv2.imwrite(str(out / name), draw_pair(img1, img2, result["boxes"]))
            caption = html.escape(f"{record.get('caption1', '')} | {record.get('caption2', '')}")
            detail = html.escape(
                f"{len(result['boxes'])} boxes; objects {result.get('objects1')} / {result.get('objects2')}; "
                f"pair similarity {result.get('pair_similarity')}; {result.get('exit_reason') or ''} counts {result.get('counts')}"
            )
            cards.append(f"<div class='card'><h3>{title}</h3><img src='{name}' loading='lazy'><p>{caption}</p><p class='small'>{detail}</p></div>")
    index = out / "index.html"
    index.write_text(
        "<!doctype html><meta charset='utf-8'><title>imgdiff_onnx results</title>"
        "<style>body{font-family:sans-serif;margin:1em}.card{margin:1em 0;border-bottom:1px solid #ccc}"
        "img{max-width:100%}.small{font-size:80%;color:#555}.err{color:#b00}</style>"
        f"<h1>imgdiff_onnx results</h1><p>{html.escape(str(results))}</p>" + "\n".join(cards),
        encoding="utf-8",
    )
    return index
