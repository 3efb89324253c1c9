"""`validate`'s outputs: validation.json, validation.md, validation.png, and the recommendation
written into the model folder's manifest (`--write`)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import platform
from pathlib import Path

import cv2
import numpy as np

from ..engine import manifest as mf
from ..runs import outfolder
from ..engine.band import SCORES, GuardBand, Margin

log = logging.getLogger(__name__)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _row(config: dict) -> list[str]:
    t, f = config["timing"], config["figures"]
    cells = [config["name"], f"{t['cpu_s_per_pair']:.2f}", f"{t['wall_s_per_pair']:.2f}", f"{t['cpu_saving_vs_fp32']:+.0%}"]
    if f is None:
        return cells + ["(reference)"] + [""] * 6  # the seven figure columns
    ps, cp, itm = f["pair_similarity"], f["crop_pair_similarity"], f["itm_probability"]
    return cells + [
        f"{ps['max_abs_delta']:.4f} / {ps['decision_flips']} of {ps['compared']}",
        f"{f['candidates']['f1']:.3f} ({f['candidates']['count_change']:+d})",
        f"{cp['max_abs_delta']:.4f} / {cp['decision_flips']} of {cp['compared']}",
        f"{itm['max_abs_delta']:.4f} / {itm['decision_flips']} of {itm['compared']}",
        f"{f['final_boxes']['f1']:.3f} (min {f['final_boxes']['min_pair_f1']:.3f})",
        f"{f['final_boxes']['identical_pairs']} of {f['final_boxes']['compared_pairs']}",
        str(f["status_differs"] + f["exit_reason_differs"]),
    ]


def _table_row(cells: list[str]) -> str:
    """A markdown table row; a `|` inside a cell (as in |Δ|) is escaped, so it stays one cell."""
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def markdown(summary: dict) -> str:
    head = [
        "run", "CPU s/pair", "wall s/pair", "CPU saving", "pair similarity max |Δ| / gate flips",
        "candidates F1 (count change)", "crop-pair similarity max |Δ| / gate flips", "ITM probability max |Δ| / flips",
        "final boxes F1", "pairs with identical boxes", "pairs whose status or exit differs",
    ]  # fmt: skip
    lines = [
        "# Precision validation",
        "",
        f"- models: `{summary['models']}`" + (" (**random-init weights**: figures say nothing about real models)" if summary["random_init"] else ""),
        f"- input: `{summary['input']}`, {summary['pairs']} pairs ({len(summary['skipped_lines'])} unreadable lines skipped, "
        f"{summary['pair_errors']} pairs with a record error)",
        f"- CPU: {summary['cpu']}; threads {summary['options']['threads'] or 'all'}",
        f"- thresholds: final boxes F1 >= {summary['options']['min_box_f1']} (FastSAM also its candidates >= "
        f"{summary['options']['min_candidate_f1']}), CPU saving >= {summary['options']['min_saving']:.0%}",
        "",
        "Each run is fp32 except the graph named; figures are against the fp32 run, on the inputs both runs scored "
        "(F1 at IoU 0.9; flips = decisions that differ at your thresholds).",
        "",
        _table_row(head),
        "|" + "---|" * len(head),
    ]
    lines += [_table_row(_row(c)) for c in summary["configs"]]
    lines += _band_lines(summary.get("guard_band"))
    lines += ["", "## Verdicts", ""]
    lines += [f"- **{v['model']}: {v['precision']}** ({v['why']})" for v in summary["verdicts"].values()]
    for check in summary["mix_checks"]:
        lines.append(f"- mix {check['precision']} together: {'keeps' if check['faithful'] else 'loses'} the fp32 result ({check['why']})")
    lines += [
        "",
        f"**Recommended precision: `{summary['recommended_precision_text']}`** "
        f"(the model folder's current default: `{summary['current_default']['precision']}`, {summary['current_default']['origin']}).",
        "",
        f"Apply it with `run --precision {summary['recommended_precision_text']}`, or store it in the model folder with "
        "`validate ... --write` so that runs without `--precision` use it.",
    ]
    return "\n".join(lines) + "\n"


def _band_lines(band: dict | None) -> list[str]:
    """The guard band per score: margin, the largest int8 error here, the banded run's hit rate."""
    if not band:
        return []

    def number(value: float | None, digits: int = 4) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    head = ["score", "margin (manifest)", "largest int8 |Δ| here", "margin holds", "margin these pairs call for", "re-scored in fp32 (banded run)"]
    lines = ["", "## Guard band", "",
             "Banded CLIP and BLIP re-score in fp32 every int8 score within the margin of a threshold; decisions are "
             "fp32's wherever int8's error stays within the margin. `--write` widens a margin these pairs exceed.", "",
             _table_row(head), "|" + "---|" * len(head)]  # fmt: skip
    for score, f in band["scores"].items():
        holds = {None: "-", True: "yes", False: "**no**"}[f["margin_holds"]]
        hits = "-" if f["hit_rate"] is None else f"{f['rescored']} of {f['scored']} ({f['hit_rate']:.1%})"
        lines.append(_table_row([score, number(f["margin"]), f"{number(f['max_error_here'])} ({f['compared']} compared)", holds,
                                 number(f["margin_here"]), hits]))  # fmt: skip
    return lines


def chart(summary: dict) -> np.ndarray:
    """Two bar charts, one row per run: CPU s/pair and final boxes F1 (BGR image)."""
    configs = summary["configs"]
    row, left, bar_w, gap = 34, 230, 300, 110  # the gap holds the longest bar's label
    height = 60 + row * len(configs)
    width = left + 2 * bar_w + gap + 90
    img = np.full((height, width, 3), 255, np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(img, "CPU s/pair", (left, 30), font, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, "final boxes F1 vs fp32", (left + bar_w + gap, 30), font, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    top = max(c["timing"]["cpu_s_per_pair"] for c in configs) or 1.0
    for i, c in enumerate(configs):
        y = 45 + i * row
        cv2.putText(img, c["name"][:28], (8, y + 18), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        cpu = c["timing"]["cpu_s_per_pair"]
        cv2.rectangle(img, (left, y + 4), (left + int(bar_w * cpu / top), y + row - 8), (200, 140, 60), -1)
        cv2.putText(img, f"{cpu:.2f}", (left + int(bar_w * cpu / top) + 4, y + 18), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        f1 = 1.0 if c["figures"] is None else c["figures"]["final_boxes"]["f1"]
        x0 = left + bar_w + gap
        colour = (80, 170, 80) if f1 >= summary["options"]["min_box_f1"] else (60, 60, 220)
        cv2.rectangle(img, (x0, y + 4), (x0 + int(bar_w * f1), y + row - 8), colour, -1)
        cv2.putText(img, f"{f1:.3f}", (x0 + int(bar_w * f1) + 4, y + 18), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return img


OUTPUT_NAMES = ("validation.json", "validation.md", "validation.png")


def write_outputs(summary: dict, out: Path) -> dict[str, Path]:
    outfolder.prepare(out, "validation")
    summary = {**summary, "cpu": summary.get("cpu") or cpu_name()}
    paths = {kind: out / name for kind, name in zip(("json", "markdown", "plot"), OUTPUT_NAMES)}
    try:
        paths["json"].write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        paths["markdown"].write_text(markdown(summary), encoding="utf-8")
        cv2.imwrite(str(paths["plot"]), chart(summary))
    finally:
        outfolder.record(out, "validation", [p for p in paths.values() if p.is_file()])
    return paths


def widened_band(manifest: mf.Manifest, summary: dict) -> tuple[GuardBand | None, list[str]]:
    """The manifest's guard band with each margin raised to what the validated pairs call for
    where that is wider (a folder without a band gets the pairs' margins, if all three were seen)."""
    observed = {score: Margin(**m) for score, m in (summary.get("guard_band") or {}).get("observed", {}).items()}
    if manifest.guard_band is not None:
        return manifest.guard_band.widened(observed)
    if set(observed) == set(SCORES):
        return GuardBand(**observed), list(SCORES)
    return None, []


def write_recommendation(models: Path, summary: dict) -> Path:
    """Store the recommended precision in the manifest (atomically), with what it rests on, and
    widen the guard band where the validated pairs call for it."""
    manifest = mf.read(Path(models))
    band, widened = widened_band(manifest, summary)
    if widened:
        log.info("guard band widened for %s: %s", ", ".join(widened), ", ".join(f"{s} {band.margin(s):.4g}" for s in widened))  # type: ignore[union-attr]
        manifest = manifest.with_guard_band(band)  # type: ignore[arg-type]
    precision = dict(summary["recommended_precision"])
    if manifest.guard_band is None and "banded" in precision.values():
        log.warning("no guard band to write (these pairs did not give every score), so banded models are written as int8")
        precision = {m: "int8" if p == "banded" else p for m, p in precision.items()}
    recommendation = {
        "precision": precision,
        "by": "validate",
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "input": summary["input"],
        "pairs": summary["pairs"],
        "thresholds": {k: summary["options"][k] for k in ("min_box_f1", "min_candidate_f1", "min_saving")},
        "cpu": summary.get("cpu") or cpu_name(),
        "verdicts": {m: v["why"] for m, v in summary["verdicts"].items()},
    }
    return mf.write(Path(models), manifest.with_recommendation(recommendation))
