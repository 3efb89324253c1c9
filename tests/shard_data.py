"""Test datasets for the shard tests: pairs of pictures of every kind the image rules cover (an
EXIF-rotated JPEG, a PNG with alpha, a grey PNG, a 16-bit PNG, plain RGB), a JSON Lines file
naming them, and helpers to compare a shard run's results with a JSON Lines run's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from imgdiff_onnx import samples

# what differs between a JSON Lines run's line and a shard run's row for the same record: where it
# came from (line / row numbers, the input's digest, the source, the resolved file paths)
WHERE = ("line", "input_digest", "source", "image_path1_resolved", "image_path2_resolved")


def _save(rgb: np.ndarray, path: Path, kind: str) -> None:
    image = Image.fromarray(rgb)
    if kind == "exif":  # stored sideways, EXIF says rotate
        exif = Image.Exif()
        exif[0x0112] = 6
        image.transpose(Image.Transpose.ROTATE_90).save(path, exif=exif, quality=92)
    elif kind == "alpha":
        alpha = np.full(rgb.shape[:2], 255, np.uint8)
        alpha[: rgb.shape[0] // 3] = 90
        Image.fromarray(np.dstack([rgb, alpha])).save(path)  # RGBA
    elif kind == "grey":
        image.convert("L").save(path)
    elif kind == "16bit":
        grey = np.asarray(image.convert("L"), dtype=np.uint16) * 257
        Image.fromarray(grey).save(path)  # uint16: mode I;16
    else:
        image.save(path)


KINDS = {"exif": ".jpg", "alpha": ".png", "grey": ".png", "16bit": ".png", "rgb": ".jpg"}


def make_pairs(folder: Path, n: int = 5, size: int = 128) -> Path:
    """`folder/pairs.jsonl` with n pairs (the i-th pair's images of the i-th kind, in turn) and
    their image files in `folder/img/`; returns the JSONL's path."""
    (folder / "img").mkdir(parents=True, exist_ok=True)
    kinds = list(KINDS)
    with open(folder / "pairs.jsonl", "w", encoding="utf-8") as handle:
        for i in range(n):
            sample = samples.pair(i, size, size)
            kind = kinds[i % len(kinds)]
            names = []
            for which, rgb in ((1, sample.image1), (2, sample.image2)):
                name = f"img/pair{i}_{which}{KINDS[kind]}"
                _save(rgb, folder / name, kind)
                names.append(name)
            record = {"id": f"pair{i}", "caption1": sample.caption1, "caption2": sample.caption2, "image_path1": names[0],
                      "image_path2": names[1], "objects1": [sample.object1], "objects2": [sample.object2], "kind": kind,
                      "meta": {"n": i, "tags": ["a", "b"]}}  # fmt: skip
            handle.write(json.dumps(record) + "\n")
    return folder / "pairs.jsonl"


def content(row: dict) -> dict:
    """A results row without where its record came from (and without the image fields, which a
    JSON Lines record holds as paths and a shard as bytes)."""
    row = {k: v for k, v in row.items() if k not in ("image_path1", "image_path2")}
    fields = {k: v for k, v in row["imgdiff"].items() if k not in WHERE}
    fields["boxes"] = [[float(np.float32(v)) for v in box] for box in fields["boxes"]]  # Parquet holds them as float32
    row["imgdiff"] = fields
    return row


def jsonl_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def folder_rows(folder: Path) -> list[dict]:
    """Every results row of a shard run's folder, shard by shard (JSON Lines or Parquet)."""
    rows: list[dict] = []
    for path in sorted(folder.rglob("*")):
        if path.name.startswith(".") or not path.is_file():
            continue
        if path.suffix == ".parquet":
            from imgdiff_onnx.runs.parquet_sink import read_results_parquet

            rows.extend(read_results_parquet(path))
        else:
            rows.extend(jsonl_rows(path))
    return rows
