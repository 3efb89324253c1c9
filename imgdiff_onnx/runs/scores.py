"""How a run keeps every score a pair's decisions depend on (its ScoreSheet, imgdiff_onnx.pairs) on disk.

A run with `keep_scores` computes every score with the gates open: the whole-pair similarity,
then FastSAM on every pair that has object words (whatever the similarity), the crop-pair
similarity of every crop window, and the ITM probability of every window's crop with every word
of its side. The gates then decide from the sheet (imgdiff_onnx.engine.decide), so any
similarity or ITM threshold can be changed afterwards, loosened as well as tightened, without a
model call.

Each score is kept twice: as the run's model computed it (int8 or fp32) and, where a banded
model scored it again in fp32 (it was within the guard band of the run's thresholds), the fp32
value; NaN where there is none.

On disk (`RESULTS.scores/` beside the results file): one `.npz` file per written batch, named by
its first input line, holding the sheets of that batch's processed pairs as flat numeric arrays
with offsets (numpy's own format, zip-compressed: no extra dependency, read without pickle; the
fp32 columns are mostly NaN and compress to almost nothing: 2.4x smaller in all, 3.5 ms per pair
to write), plus `meta.json` (the run's precision, guard band and thresholds). A chunk is
written (to a temporary name, fsync'ed, renamed) before its batch's result lines, so every
result line of a kept-scores run has its scores; a resume drops the chunks at and after the
line it resumes from, and an overwrite drops them all.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ImgDiffError, RunError
from ..params import OperatorParams
from ..pairs import ScoreSheet
from .runfile import fsync_folder

if TYPE_CHECKING:
    from ..engine.modelset import ModelSet

FORMAT = "imgdiff-onnx-scores/1"
META_NAME = "meta.json"
_CHUNK = re.compile(r"^line-(\d{9})\.npz$")


_PAIR_FIELDS = ("pair", "pair_identical", "boxes1")
_CANDIDATE_FIELDS = ("boxes", "window_of")
_WINDOW_FIELDS = ("window_valid", "window_identical", "crop")


def pack(lines: list[int], digests: list[str], sheets: list[ScoreSheet]) -> dict[str, np.ndarray]:
    """Sheets of one batch as flat arrays with per-pair offsets."""
    arrays: dict[str, np.ndarray] = {
        "format": np.array(FORMAT),
        "line": np.asarray(lines, dtype=np.int64),
        "digest": np.asarray(digests, dtype="<U16"),
        "pair": np.array([s.pair for s in sheets], dtype=np.float64).reshape(-1, 2),
        "pair_identical": np.array([s.pair_identical for s in sheets], dtype=bool),
        "boxes1": np.array([s.boxes1 for s in sheets], dtype=np.int32),
        "words1": np.array([s.itm1.shape[1] for s in sheets], dtype=np.int32),
        "words2": np.array([s.itm2.shape[1] for s in sheets], dtype=np.int32),
    }
    for name, offsets in (("candidates", [len(s.boxes) for s in sheets]), ("windows", [len(s.crop) for s in sheets])):
        arrays[name] = np.concatenate([[0], np.cumsum(offsets, dtype=np.int64)]).astype(np.int64)
    for name in _CANDIDATE_FIELDS + _WINDOW_FIELDS:
        arrays[name] = np.concatenate([getattr(s, name) for s in sheets]) if sheets else np.zeros(0)
    for side in ("itm1", "itm2"):
        arrays[side] = np.concatenate([getattr(s, side).reshape(-1, 2) for s in sheets]) if sheets else np.zeros((0, 2))
    arrays["boxes"] = np.asarray(arrays["boxes"], dtype=np.float32).reshape(-1, 4)
    return arrays


def unpack(arrays: dict[str, np.ndarray]) -> Iterator[tuple[int, str, ScoreSheet]]:
    """(input line, input digest, sheet) of each pair of a chunk."""
    c, w = arrays["candidates"], arrays["windows"]
    n = len(arrays["line"])
    sizes = np.diff(w) if len(w) == n + 1 else None
    consistent = (sizes is not None and len(c) == n + 1 and c[0] == 0 and w[0] == 0 and bool(np.all(np.diff(c) >= 0)) and bool(np.all(sizes >= 0))
                  and c[-1] == len(arrays["boxes"]) == len(arrays["window_of"]) and w[-1] == len(arrays["crop"]) == len(arrays["window_valid"])
                  and all(len(arrays[k]) == n for k in ("digest", "pair", "pair_identical", "boxes1", "words1", "words2"))
                  and int(np.sum(sizes * arrays["words1"])) == len(arrays["itm1"]) and int(np.sum(sizes * arrays["words2"])) == len(arrays["itm2"]))  # fmt: skip
    if not consistent:
        raise ValueError("its offsets and arrays do not agree")  # internal: read_sheets turns it into one line naming the chunk
    i1 = i2 = 0
    for p in range(len(arrays["line"])):
        n1, n2 = int(arrays["words1"][p]), int(arrays["words2"][p])
        nw = int(w[p + 1] - w[p])
        itm1 = arrays["itm1"][i1 : i1 + nw * n1].reshape(nw, n1, 2)
        itm2 = arrays["itm2"][i2 : i2 + nw * n2].reshape(nw, n2, 2)
        i1, i2 = i1 + nw * n1, i2 + nw * n2
        sheet = ScoreSheet(
            pair=arrays["pair"][p],
            pair_identical=bool(arrays["pair_identical"][p]),
            boxes=arrays["boxes"][c[p] : c[p + 1]],
            boxes1=int(arrays["boxes1"][p]),
            window_of=arrays["window_of"][c[p] : c[p + 1]].astype(np.int64),
            window_valid=arrays["window_valid"][w[p] : w[p + 1]].astype(bool),
            window_identical=arrays["window_identical"][w[p] : w[p + 1]].astype(bool),
            crop=arrays["crop"][w[p] : w[p + 1]],
            itm1=itm1,
            itm2=itm2,
        )
        yield int(arrays["line"][p]), str(arrays["digest"][p]), sheet


def scores_folder(results: Path) -> Path:
    """Where a results file's kept scores are: `RESULTS.scores/` beside it."""
    return results.with_name(results.name + ".scores")


class ScoreWriter:
    """Writes a run's kept scores; used by the results writer, under the results file's lock."""

    def __init__(self, results: Path, meta: dict, resume_after: int, start_again: bool):
        self.folder = scores_folder(results)
        if resume_after and not (self.folder / META_NAME).is_file():
            raise RunError(f"{results}: --keep-scores on resume, but the run that wrote it kept no scores ({self.folder} "
                           "is missing); resume without --keep-scores, or start again with --overwrite")  # fmt: skip
        self._meta = meta
        self._resume_after = resume_after
        self._start_again = start_again
        self._ready = False

    def _prepare(self) -> None:
        """At the first batch written: clear what an overwrite replaces or a resume recomputes."""
        self.folder.mkdir(exist_ok=True)
        for path in self.folder.iterdir():  # only files of this format: a user's own files stay
            m = _CHUNK.match(path.name.removesuffix(".tmp"))
            stale = path.name == META_NAME + ".tmp" or (m is not None and (self._start_again or path.name.endswith(".tmp")
                                                                          or int(m.group(1)) > self._resume_after))  # fmt: skip
            if stale:
                path.unlink()
        if self._start_again or not (self.folder / META_NAME).is_file():
            tmp = self.folder / (META_NAME + ".tmp")
            tmp.write_text(json.dumps(self._meta, indent=1, sort_keys=True) + "\n", encoding="utf-8")
            os.replace(tmp, self.folder / META_NAME)
        self._ready = True

    def write(self, lines: list[int], digests: list[str], sheets: list[ScoreSheet]) -> None:
        if not self._ready:
            self._prepare()
        if not lines:
            return
        path = self.folder / f"line-{lines[0]:09d}.npz"
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, **pack(lines, digests, sheets))  # type: ignore[arg-type]
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_folder(self.folder)


@dataclass(frozen=True)
class KeptScoresMeta:
    """What the run that kept the scores was: its precision, guard band and thresholds."""

    precision: str
    banded: tuple[str, ...]  # models whose scores were banded ("clip", "blip")
    margins: dict[str, float]  # guard-band margin per score, when some model was banded
    params: dict  # the run's three parameter dicts
    models: str  # the model folder the run used
    models_digest: str
    jpeg_roundtrip: bool

    @classmethod
    def read(cls, folder: Path) -> "KeptScoresMeta":
        path = folder / META_NAME
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            found = data.pop("format", None)
            data["banded"] = tuple(data["banded"])
            meta = cls(**data)
        except FileNotFoundError:
            raise RunError(f"no kept scores at {folder}: run with --keep-scores to keep them") from None
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            raise RunError(f"{path}: not the record of kept scores this version reads ({exc})") from None
        if found != FORMAT:
            raise RunError(f"{path}: kept scores of format {found!r}; this version reads {FORMAT}")
        problem = meta._problem()
        if problem:
            raise RunError(f"{path}: not the record of kept scores this version reads ({problem})")
        return meta

    def _problem(self) -> str:
        """What in the record is not of its type (a hand-edited or damaged meta.json), or ""."""
        if not isinstance(self.precision, str) or not isinstance(self.models, str) or not isinstance(self.models_digest, str):
            return "precision, models and models_digest must be text"
        if not all(b in ("clip", "blip") for b in self.banded):
            return f"banded must list clip and/or blip, got {list(self.banded)}"
        if not isinstance(self.margins, dict) or not all(isinstance(k, str) and type(v) in (int, float) and math.isfinite(v) and v >= 0
                                                         for k, v in self.margins.items()):  # fmt: skip
            return "margins must map score names to finite numbers >= 0"
        if not isinstance(self.params, dict) or not isinstance(self.jpeg_roundtrip, bool):
            return "params must be a mapping and jpeg_roundtrip true or false"
        try:
            OperatorParams.from_mapping(self.params)
        except ImgDiffError as exc:
            return f"params: {exc}"
        return ""

    def to_json(self) -> dict:
        return {"format": FORMAT, "precision": self.precision, "banded": list(self.banded), "margins": self.margins,
                "params": self.params, "models": self.models, "models_digest": self.models_digest, "jpeg_roundtrip": self.jpeg_roundtrip}  # fmt: skip


def read_sheets(folder: Path) -> Iterator[tuple[int, str, ScoreSheet]]:
    """Every kept sheet, chunk by chunk in line order (a later chunk holds later lines)."""
    chunks = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := _CHUNK.match(p.name)))
    for _, path in chunks:
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
            if str(arrays.get("format")) != FORMAT:
                raise RunError(f"{path}: not kept scores of format {FORMAT}")
            sheets = list(unpack(arrays))
        except RunError:
            raise
        except Exception as exc:  # noqa: BLE001 - a truncated, corrupt or foreign chunk (zip, npy or layout errors alike): one line
            detail = " ".join(str(exc).split())[:200]
            raise RunError(f"{path}: cannot read these kept scores ({type(exc).__name__}: {detail}); the chunk is damaged: run again "
                           "with --keep-scores to keep them anew") from None  # fmt: skip
        yield from sheets


def sheets_by_line(folder: Path, wanted: Iterable[int] | None = None) -> dict[int, tuple[str, ScoreSheet]]:
    """Sheets keyed by input line number (only `wanted` lines, when given)."""
    keep = None if wanted is None else set(wanted)
    return {line: (digest, sheet) for line, digest, sheet in read_sheets(folder) if keep is None or line in keep}


def kept_scores_meta(models: "ModelSet", params: "OperatorParams", jpeg_roundtrip: bool) -> dict:
    """The record written beside a run's kept scores (KeptScoresMeta)."""
    from .runfile import models_digest

    band = models.manifest.guard_band
    banded = [m for m in models.precision.banded() if m in ("clip", "blip")] if band is not None else []
    return KeptScoresMeta(
        precision=str(models.precision),
        banded=tuple(banded),
        margins=band.to_margins() if band is not None and banded else {},
        params=params.to_dicts(),
        models=str(Path(models.folder).resolve()),
        models_digest=models_digest(models.manifest),
        jpeg_roundtrip=jpeg_roundtrip,
    ).to_json()


def drop_scores(results: Path) -> None:
    """Remove a results file's kept scores (when the file is replaced): the chunks and record this
    format names, and the folder when nothing else is left in it (a user's own files stay)."""
    folder = scores_folder(results)
    if not (folder / META_NAME).is_file():
        return
    for path in folder.iterdir():
        if path.is_file() and (_CHUNK.match(path.name.removesuffix(".tmp")) or path.name in (META_NAME, META_NAME + ".tmp")):
            path.unlink()
    if not any(folder.iterdir()):
        folder.rmdir()
