"""Sweep: what a grid of one or two thresholds does to a kept-scores run, to pick them by looking.

For every setting of the grid (the other parameters are the run's, or `base`), every kept pair is
decided again (imgdiff_onnx.engine.decide) and counted: pairs with at least one box, boxes per
pair, and why the others have none (no object words, the pair-similarity gate, no candidate
left after the crop gates, an error). Written as sweep.csv, sweep.md, sweep.png and sweep.json
(which `show --sweep` puts in the report).

No model runs: a banded model's score within the guard band of a grid threshold decides by its
kept fp32 value where the run computed one, else by its int8 value; the table counts those
(`int8_in_band`). `retune` at the chosen setting computes them and is exact.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from ..errors import ParameterError
from ..params import OperatorParams
from ..runs import outfolder
from ..runs.progress import ProgressBar
from ..runs.records import RESULT_KEY
from ..engine.decide import BandSpec, decide
from ..pairs import ScoreSheet
from ..runs.signals import GracefulStop, Interrupted
from .retune import RETUNABLE, KeptRun

GROUP_OF = {name: group for group, names in RETUNABLE.items() for name in names}
_GROUP_FIELD = {"image_pair_similarity_filter_args": "pair", "image_text_matching_filter_args": "matching"}
MAX_SETTINGS = 2500


@dataclass(frozen=True)
class Axis:
    name: str  # a retunable threshold, e.g. "max_score_2"
    values: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.name not in GROUP_OF:
            raise ParameterError(f"--vary {self.name}: not a threshold a sweep can change; one of {', '.join(GROUP_OF)}", "vary")
        if not self.values:
            raise ParameterError(f"--vary {self.name}: no values", "vary")


def parse_axis(text: str) -> Axis:
    """NAME=START:STOP:STEP (STOP included when the steps reach it) or NAME=V1,V2,..."""
    name = text.partition("=")[0].strip()
    if len(name) > 40:
        raise ParameterError(f"--vary {_shown(text)}: not a threshold a sweep can change; one of {', '.join(GROUP_OF)}", "vary")
    name, sep, spec = text.partition("=")
    if not sep:
        raise ParameterError(f"--vary {_shown(text)}: expected NAME=START:STOP:STEP or NAME=V1,V2,...", "vary")
    pieces = spec.replace(":", ",").split(",")
    if len(pieces) > MAX_SETTINGS:
        raise ParameterError(f"--vary {_shown(text)}: {len(pieces):,} values; at most {MAX_SETTINGS:,}", "vary")
    try:
        numbers = [float(v) for v in pieces]
    except ValueError:
        bad = next(v for v in pieces if not _is_float(v))
        raise ParameterError(f"--vary {_shown(text)}: {_shown(bad)} is not a number", "vary") from None
    if not all(np.isfinite(numbers)):
        raise ParameterError(f"--vary {_shown(text)}: every value, bound and step must be a finite number", "vary")
    if ":" not in spec:
        return Axis(name.strip(), tuple(numbers))
    if len(numbers) != 3:
        raise ParameterError(f"--vary {_shown(text)}: expected NAME=START:STOP:STEP", "vary")
    start, stop, step = numbers
    if not step > 0 or not stop >= start:
        raise ParameterError(f"--vary {_shown(text)}: STEP must be > 0 and STOP >= START", "vary")
    steps = (stop - start) / step
    if steps >= MAX_SETTINGS:
        raise ParameterError(f"--vary {_shown(text)}: {steps + 1:.3g} values; at most {MAX_SETTINGS:,}", "vary")
    count = int(np.floor(steps + 1e-9)) + 1
    return Axis(name.strip(), tuple(round(start + k * step, 10) for k in range(count)))


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _shown(text: str) -> str:
    """A --vary spec as an error message quotes it (long ones cut)."""
    return repr(text) if len(text) <= 80 else repr(text[:77] + "...")


def with_value(params: OperatorParams, name: str, value: float) -> OperatorParams:
    group = _GROUP_FIELD[GROUP_OF[name]]
    return replace(params, **{group: replace(getattr(params, group), **{name: value})})


@dataclass
class SweepRow:
    setting: dict[str, float]
    pairs: int = 0
    with_boxes: int = 0
    boxes: int = 0
    int8_in_band: int = 0
    exits: Counter | None = None
    invalid: str = ""  # why the setting cannot be run (e.g. min above max)

    def to_json(self) -> dict:
        return {**self.setting, "pairs": self.pairs, "pairs_with_boxes": self.with_boxes, "boxes": self.boxes,
                "boxes_per_pair": round(self.boxes / self.pairs, 4) if self.pairs else 0.0, "int8_in_band": self.int8_in_band,
                "exits": dict(sorted((self.exits or Counter()).items())), "invalid": self.invalid}  # fmt: skip


def _exit_kind(fields: dict) -> str:
    if fields.get("status") != "ok":
        return "error"
    reason = fields.get("exit_reason") or ""
    if reason.startswith("pair similarity"):
        return "pair_similarity"
    if reason:
        return "no_objects"
    return "has_boxes" if fields.get("boxes") else "no_box_left"


def grid_size(axes: list[Axis]) -> int:
    """Settings a sweep over `axes` has (computed before any is built)."""
    return int(np.prod([len(a.values) for a in axes], dtype=np.int64))


def sweep(kept: KeptRun | list[KeptRun], axes: list[Axis], base: OperatorParams | None = None, progress: bool = True) -> list[SweepRow]:
    """One row per grid setting (the first axis outermost), over one kept run or several (the
    shards of a folder, KeptRun.open_all). The kept scores are read once, pair by pair, and each
    pair is decided at every setting, so memory holds one chunk, not the run."""
    runs = kept if isinstance(kept, list) else [kept]
    if not 1 <= len(axes) <= 2 or len({a.name for a in axes}) != len(axes):
        raise ParameterError("a sweep varies one or two different thresholds", "vary")
    if grid_size(axes) > MAX_SETTINGS:
        raise ParameterError(f"--vary: {grid_size(axes):,} settings; at most {MAX_SETTINGS:,}", "vary")
    if not runs:
        raise ParameterError("nothing to sweep: the results folder has no committed shard yet", "input")
    grid = [[(axes[0].name, a)] for a in axes[0].values] if len(axes) == 1 else [[(axes[0].name, a), (axes[1].name, b)] for a in axes[0].values for b in axes[1].values]
    if len(grid) > MAX_SETTINGS:
        raise ParameterError(f"--vary: {len(grid)} settings; at most {MAX_SETTINGS}", "vary")
    rows = [SweepRow({name: value for name, value in setting}, exits=Counter()) for setting in grid]
    settings: list[tuple[SweepRow, OperatorParams]] = []
    for row, setting in zip(rows, grid):
        try:
            params = base or runs[0].params
            for name, value in setting:
                params = with_value(params, name, value)
            settings.append((row, params))
        except ParameterError as exc:
            row.invalid = str(exc)
    bar = ProgressBar(sum(run.count() for run in runs), progress, unit="pair")
    with GracefulStop("stopping; the sweep writes nothing") as stop:
        for record, sheet, band in ((record, sheet, run.band) for run in runs for record, sheet in run.lines()):
            if stop.signum is not None:
                bar.close()
                raise Interrupted(stop.signum, "the sweep wrote nothing; run the same command again")
            _count(record, sheet, band, settings)
            bar.update()
    bar.close()
    return rows


def _count(record: dict, sheet: ScoreSheet | None, band: BandSpec, settings: list[tuple[SweepRow, OperatorParams]]) -> None:
    """Count one results line at every setting of the grid."""
    fields = record[RESULT_KEY]
    for row, params in settings:
        row.pairs += 1
        if sheet is None:  # no threshold changes this line
            n, kind = len(fields.get("boxes", [])), _exit_kind(fields)
        else:
            d = decide(sheet, "", fields["objects1"], fields["objects2"], params, band)
            n = len(d.result.kept)
            kind = "pair_similarity" if d.result.exit_reason else ("has_boxes" if n else "no_box_left")
            row.int8_in_band += len(d.needs)
        row.boxes += n
        row.with_boxes += n > 0
        row.exits[kind] += 1  # type: ignore[index]


@dataclass(frozen=True)
class SweepOptions:
    base: OperatorParams | None = None
    progress: bool = True


def sweep_file(results: Path, axes: list[Axis], out: Path, options: SweepOptions = SweepOptions()) -> dict[str, Path]:
    """Run the sweep and write sweep.json, sweep.csv, sweep.md and sweep.png into `out`."""
    if not 1 <= len(axes) <= 2 or grid_size(axes) > MAX_SETTINGS:  # before the results are read
        raise ParameterError(f"--vary: {grid_size(axes):,} settings over {len(axes)} threshold(s); a sweep varies one or two, "
                             f"at most {MAX_SETTINGS:,} settings", "vary")  # fmt: skip
    outfolder.claim(out, "sweep")  # before the sweep is computed
    rows = sweep(KeptRun.open_all(results), axes, options.base, options.progress)
    outfolder.prepare(out, "sweep")
    data = [row.to_json() for row in rows]
    kinds = sorted({k for row in data for k in row["exits"]})
    names = [a.name for a in axes]
    header = names + ["pairs", "pairs_with_boxes", "boxes_per_pair", "int8_in_band"] + [f"exit_{k}" for k in kinds]
    paths = {"json": out / "sweep.json", "csv": out / "sweep.csv", "markdown": out / "sweep.md", "plot": out / "sweep.png"}
    try:
        paths["json"].write_text(json.dumps({"results": str(results), "axes": names, "rows": data}, indent=1, allow_nan=False) + "\n", encoding="utf-8")
        table = [[row[n] for n in names] + [row["pairs"], row["pairs_with_boxes"], row["boxes_per_pair"], row["int8_in_band"]]
                 + [row["exits"].get(k, 0) for k in kinds] if not row["invalid"] else [row[n] for n in names] + ["invalid"] * (len(header) - len(names))
                 for row in data]  # fmt: skip
        with open(paths["csv"], "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(table)
        md = [f"# Sweep of {results.name}: {' x '.join(names)}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        md += ["| " + " | ".join(str(v) for v in line) + " |" for line in table]
        paths["markdown"].write_text("\n".join(md) + "\n", encoding="utf-8")
        cv2.imwrite(str(paths["plot"]), plot(data, names)[:, :, ::-1])
    finally:  # what was written (also by a sweep stopped half-way) is listed as the sweep's
        outfolder.record(out, "sweep", [p for p in paths.values() if p.is_file()])
    return paths


def plot(rows: list[dict], names: list[str], size: tuple[int, int] = (900, 520)) -> np.ndarray:
    """RGB chart: one axis: pairs with boxes and boxes per pair against the threshold; two axes:
    a grid of boxes per pair (darker = more), pairs with boxes in each cell."""
    w, h = size
    canvas = np.full((h, w, 3), 255, np.uint8)
    ok = [r for r in rows if not r["invalid"]]
    if not ok:
        return canvas
    if len(names) == 1:
        xs = [r[names[0]] for r in ok]
        for panel, (key, label, colour) in enumerate((("pairs_with_boxes", "pairs with boxes", (31, 119, 180)), ("boxes_per_pair", "boxes per pair", (214, 39, 40)))):
            top, bottom = 40 + panel * (h // 2), (panel + 1) * (h // 2) - 30
            _line_panel(canvas, xs, [float(r[key]) for r in ok], (70, top, w - 20, bottom), label, colour)
        cv2.putText(canvas, names[0], (w // 2 - 40, h - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        return canvas
    a_values = sorted({r[names[0]] for r in ok})
    b_values = sorted({r[names[1]] for r in ok})
    top_value = max(float(r["boxes_per_pair"]) for r in ok) or 1.0
    cw, ch = (w - 110) // max(1, len(b_values)), (h - 80) // max(1, len(a_values))
    for r in ok:
        i, j = a_values.index(r[names[0]]), b_values.index(r[names[1]])
        x0, y0 = 100 + j * cw, 40 + i * ch
        shade = int(235 - 180 * float(r["boxes_per_pair"]) / top_value)
        cv2.rectangle(canvas, (x0, y0), (x0 + cw - 1, y0 + ch - 1), (shade, shade, 255), -1)
        if cw >= 28 and ch >= 14:
            cv2.putText(canvas, str(r["pairs_with_boxes"]), (x0 + 3, y0 + ch // 2 + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
    for i, a in enumerate(a_values):
        cv2.putText(canvas, f"{a:g}", (10, 40 + i * ch + ch // 2 + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
    for j, b in enumerate(b_values):
        cv2.putText(canvas, f"{b:g}", (100 + j * cw + 2, h - 25), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
    title = f"boxes per pair (darker = more, max {top_value:.2f}); number: pairs with boxes. rows {names[0]}, columns {names[1]}"
    cv2.putText(canvas, title, (10, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return canvas


def _line_panel(canvas: np.ndarray, xs: list[float], ys: list[float], box: tuple[int, int, int, int], label: str, colour: tuple[int, int, int]) -> None:
    x0, y0, x1, y1 = box
    cv2.rectangle(canvas, (x0, y0), (x1, y1), (0, 0, 0), 1)
    lo_x, hi_x = min(xs), max(xs)
    hi_y = max(max(ys), 1e-9)
    points = [(int(x0 + (x - lo_x) / ((hi_x - lo_x) or 1) * (x1 - x0)), int(y1 - y / hi_y * (y1 - y0))) for x, y in zip(xs, ys)]
    for a, b in zip(points, points[1:]):
        cv2.line(canvas, a, b, colour, 2, cv2.LINE_AA)
    for p in points:
        cv2.circle(canvas, p, 3, colour, -1, cv2.LINE_AA)
    cv2.putText(canvas, f"{label} (max {hi_y:g})", (x0, y0 - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 1, cv2.LINE_AA)
    for x in (lo_x, hi_x):
        px = int(x0 + (x - lo_x) / ((hi_x - lo_x) or 1) * (x1 - x0))
        cv2.putText(canvas, f"{x:g}", (px - 10, y1 + 15), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
