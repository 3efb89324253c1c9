"""S1-S8 of DESIGN.md on onnxruntime, with the execution plan of section 4.

Plan per batch of pairs:
  prepare each pair:  images -> S2 objects (exit if either list is empty) -> S1 CLIP pair gate
                      (exit outside the interval) -> image 2 resized to image 1 (D1) ->
                      S3 FastSAM on both -> S4 candidates and crop windows
  score all pairs together, cheapest rejection first, each unique crop once:
      S6 CLIP crop-pair gate  (2 x CLIP per unique window)
      S5 BLIP on crop 1       (only S6 survivors; one vision pass per crop, words reuse it,
                               a crop stops at its first passing word)
      S5 BLIP on crop 2       (only crop-1 survivors)
  finish each pair:   S7 greedy overlap removal in candidate order -> S8 boxes.
S5 (two sides) and S6 are ANDed tests of the same candidate, so this order gives the set the
original's order gives.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from . import boxes as bx
from .captions import CaptionDifference, WordDiffTooComplex, caption_difference
from .errors import ModelRunError, RecordErrorBase
from .imageio import ImageLoadError, LoadedImage, from_array, load_image_file
from .integrity import MODEL_CHECKS, ModelCheck
from .modelset import ModelSet, SessionSettings
from .models.blip import BlipMatcher
from .models.clip import ClipImageEncoder, cosine
from .models.fastsam import FastSamSegmenter
from .pairs import EMPTY_BOXES, BoxEvidence, ImageSource, PairError, PairFailure, PairInput, PairResult
from .params import OperatorParams
from .precision import Precision, PrecisionLike

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineSettings:
    """How the engine runs (not what it computes).

    precision: which graphs run: "int8", "fp32", a per-model choice such as
    "fastsam=fp32,clip=int8,blip=int8" (or a mapping / Precision; see imgdiff_onnx.precision), or
    None (default) for the model folder's recommendation (written by `validate --write`), else
    the built-in default, FastSAM fp32 with CLIP and BLIP int8. model_check: "once" (default)
    checks each model file's sha256 against the manifest the first time and trusts it while its
    size and mtime stay the same; "always" hashes at every load; "size" compares sizes only (see
    imgdiff_onnx.integrity). threads: intra-op threads of every session
    (0 = all cores). crop_batch_size: crops per model call where the graph is batch-invariant.
    jpeg_roundtrip: D2 compatibility, crops go through a JPEG encode (OpenCV, quality 95) and
    PIL decode as in Data-Juicer, for score-exact comparison; default in memory.
    memory_arena: onnxruntime's CPU memory arena (keeps freed activation buffers for reuse).
    Off by default: measured ~200 MB lower peak RSS for the int8 engine at the same speed
    (within run-to-run noise); see the README's memory figures.
    memory_pattern: onnxruntime's memory-pattern planning (one block sized for a run's
    activations). On by default, as in onnxruntime: off lowers int8 FastSAM's own peak at 1024 px
    by ~95 MB but the engine's end-to-end peak not at all (measured 1017 vs 1013 MB), for a few
    percent of FastSAM's time.
    """

    precision: PrecisionLike | None = None
    threads: int = 0
    crop_batch_size: int = 16
    jpeg_roundtrip: bool = False
    model_check: ModelCheck = "once"
    memory_arena: bool = False
    memory_pattern: bool = True
    diagnostics: bool = False  # keep every score a gate computed, keyed by candidate window (PairResult.diagnostics)

    def __post_init__(self) -> None:
        if self.precision is not None:
            Precision.parse(self.precision)  # fail here, not at load time
        if self.crop_batch_size < 1:
            raise ValueError(f"crop_batch_size must be >= 1, got {self.crop_batch_size}")
        if self.model_check not in MODEL_CHECKS:
            raise ValueError(f"model_check must be one of {', '.join(MODEL_CHECKS)}, got {self.model_check!r}")


def crop_window(box_xywh: np.ndarray) -> tuple[int, int, int, int]:
    """S4: rows int(cy - h/2) : int(cy + h/2), columns int(cx - w/2) : int(cx + w/2), float32 math."""
    cx, cy, w, h = (np.float32(v) for v in box_xywh)
    two = np.float32(2)
    return int(cy - h / two), int(cy + h / two), int(cx - w / two), int(cx + w / two)


def _crop(image: np.ndarray, window: tuple[int, int, int, int]) -> np.ndarray:
    r0, r1, c0, c1 = window
    return image[r0:r1, c0:c1]  # Python slice semantics, as the original


def jpeg_roundtrip(rgb: np.ndarray) -> np.ndarray:
    """D2 compatibility: OpenCV JPEG (quality 95) then PIL decode to RGB, as Data-Juicer's cache."""
    ok, data = cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 95])
    if not ok:
        raise ValueError("JPEG encoding failed")
    with Image.open(io.BytesIO(data.tobytes())) as image:
        return np.asarray(image.convert("RGB"))


@dataclass
class _WindowScores:
    """Diagnostics sink for one crop: (window, word) -> probability."""

    store: dict
    window: tuple[int, int, int, int]

    def record(self, word: str, probability: float) -> None:
        self.store[(self.window, word)] = probability


@dataclass
class _Prepared:
    """A pair after S1-S4, waiting for crop scoring."""

    result: PairResult
    windows: list[tuple[int, int, int, int]] = field(default_factory=list)  # per candidate
    valid: np.ndarray | None = None  # per candidate: non-degenerate crop (D4)
    image1: np.ndarray | None = None
    image2: np.ndarray | None = None  # resized to image 1 (D1)
    passed: np.ndarray | None = None  # per candidate, updated by each gate
    # per crop window: "crop_similarity", and "word1"/"itm1", "word2"/"itm2" once a word passed
    evidence: dict[tuple[int, int, int, int], dict] = field(default_factory=dict)


class DifferenceAreaGenerator:
    """The Img-Diff difference-area operator on onnxruntime.

    >>> gen = DifferenceAreaGenerator("models/")                                 # doctest: +SKIP
    >>> result = gen.process(PairInput("a.jpg", "b.jpg", "A cat.", "A dog."))    # doctest: +SKIP
    >>> result.boxes  # float32 (K, 4) centre xywh                               # doctest: +SKIP
    """

    def __init__(self, models: str | Path | ModelSet, params: OperatorParams | None = None, settings: EngineSettings | None = None):
        self.settings = settings or EngineSettings()
        self.params = params or OperatorParams()
        started = time.perf_counter()
        self.models = models if isinstance(models, ModelSet) else ModelSet(models, self.settings.precision, self.settings.model_check)
        sess = SessionSettings(threads=self.settings.threads, cpu_mem_arena=self.settings.memory_arena, mem_pattern=self.settings.memory_pattern)
        g = self.models.graphs
        self.clip = ClipImageEncoder(self.models.session("clip_vision", sess), self.models.clip_norm, g["clip_vision"].batch_invariant, self.settings.crop_batch_size)
        self.blip = BlipMatcher(
            self.models.session("blip_vision", sess),
            self.models.session("blip_itm", sess),
            self.models.tokenizer_path,
            self.models.blip_norm,
            g["blip_vision"].batch_invariant,
            g["blip_itm"].batch_invariant,
            self.models.tokenizer_max_length,
            self.settings.crop_batch_size,
        )
        self.segmenter = FastSamSegmenter(self.models.session("fastsam", sess), self.models.letterbox)
        self.load_seconds = time.perf_counter() - started
        log.info(
            "loaded graphs from %s in %.2f s: precision %s (%s)", self.models.folder, self.load_seconds, self.models.precision, self.models.precision_origin
        )
        if self.models.random_init:
            log.warning("model folder %s holds RANDOM-INIT weights: boxes are meaningless", self.models.folder)

    @classmethod
    def from_data_juicer_args(
        cls,
        models: str | Path,
        image_pair_similarity_filter_args: dict | None = None,
        image_segment_mapper_args: dict | None = None,
        image_text_matching_filter_args: dict | None = None,
        settings: EngineSettings | None = None,
    ) -> "DifferenceAreaGenerator":
        params = OperatorParams.from_dicts(image_pair_similarity_filter_args, image_segment_mapper_args, image_text_matching_filter_args)
        return cls(models, params, settings)

    # ---- public API -------------------------------------------------------------------

    def process(self, pair: PairInput) -> PairResult:
        """One pair; raises PairError for a bad record."""
        prepared = self._prepare(pair)
        self._score([prepared])
        return self._finish(prepared)

    def process_many(self, pairs: Iterable[PairInput], pairs_per_batch: int = 4) -> Iterator[PairResult | PairFailure]:
        """Results in input order; crop scoring is batched across `pairs_per_batch` pairs.

        A bad record yields a PairFailure and the run goes on.
        """
        if pairs_per_batch < 1:
            raise ValueError(f"pairs_per_batch must be >= 1, got {pairs_per_batch}")
        batch: list[PairInput] = []
        for pair in pairs:
            batch.append(pair)
            if len(batch) == pairs_per_batch:
                yield from self._process_batch(batch)
                batch = []
        if batch:
            yield from self._process_batch(batch)

    # ---- stages -------------------------------------------------------------------------

    def _process_batch(self, pairs: list[PairInput]) -> list[PairResult | PairFailure]:
        prepared: list[_Prepared | PairFailure] = []
        for pair in pairs:
            try:
                prepared.append(self._prepare(pair))
            except PairError as exc:
                prepared.append(PairFailure(key=pair.key, error=exc.message))
            except ModelRunError as exc:
                prepared.append(PairFailure(key=pair.key, error=str(exc)))
        ready = [p for p in prepared if isinstance(p, _Prepared)]
        failed = self._score_isolating(ready)
        return [p if isinstance(p, PairFailure) else failed.get(id(p)) or self._finish(p) for p in prepared]

    def _score_isolating(self, ready: list[_Prepared]) -> dict[int, PairFailure]:
        """Score the batch's crops together; if onnxruntime fails, score each pair alone, so that
        only the pair it fails on becomes an error (keyed by id() of its _Prepared)."""
        # what _score changes, to start each pair again from where the batch started
        saved = [(p.passed, dict(p.result.counts), dict(p.result.times), {k: dict(v) for k, v in p.result.diagnostics.items()},
                  {k: dict(v) for k, v in p.evidence.items()}) for p in ready]  # fmt: skip
        try:
            self._score(ready)
            return {}
        except ModelRunError as exc:
            if len(ready) == 1:
                return {id(ready[0]): PairFailure(key=ready[0].result.key, error=str(exc))}
            log.warning("%s; scoring the %d pairs of the batch one by one", exc, len(ready))
        failed = {}
        for p, (passed, counts, times, diagnostics, evidence) in zip(ready, saved):
            p.passed, p.result.counts, p.result.times, p.result.diagnostics, p.evidence = passed, counts, times, diagnostics, evidence
            failed.update(self._score_isolating([p]))
        return failed

    def _load(self, source: ImageSource, key: str, which: str) -> LoadedImage:
        try:
            if isinstance(source, np.ndarray):
                return from_array(source, f"{which} array")
            if not isinstance(source, (str, Path)) or str(source) == "":
                raise ImageLoadError(f"{which}: expected a path or an array, got {type(source).__name__}")
            return load_image_file(source)
        except ImageLoadError as exc:
            raise PairError(key, f"{which}: {exc}") from None

    def _objects(self, pair: PairInput) -> tuple[list[str], list[str], CaptionDifference | None]:
        if pair.objects1 is not None or pair.objects2 is not None:
            if pair.objects1 is None or pair.objects2 is None:
                raise PairError(pair.key, "objects1 and objects2 must be given together")
            for name, words in (("objects1", pair.objects1), ("objects2", pair.objects2)):
                if not all(isinstance(w, str) for w in words):
                    raise PairError(pair.key, f"{name} must be a list of strings")
            return list(pair.objects1), list(pair.objects2), None
        for name, caption in (("caption1", pair.caption1), ("caption2", pair.caption2)):
            if caption is None:
                raise PairError(pair.key, f"{name} is missing (give captions, or objects1 and objects2)")
            if not isinstance(caption, str):
                raise PairError(pair.key, f"{name} must be a string, got {type(caption).__name__}")
        try:
            diff = caption_difference(pair.caption1, pair.caption2)
            return diff.objects1, diff.objects2, diff
        except WordDiffTooComplex as exc:
            raise PairError(pair.key, str(exc)) from None

    def _prepare(self, pair: PairInput) -> _Prepared:
        times: dict[str, float] = {}
        t = time.perf_counter()
        if isinstance(pair.image1, (str, Path)) and isinstance(pair.image2, (str, Path)):
            if Path(pair.image1).resolve() == Path(pair.image2).resolve():
                raise PairError(pair.key, f"image_path1 and image_path2 are the same file ({pair.image1})")
        objects1, objects2, diff = self._objects(pair)
        times["captions"] = time.perf_counter() - t
        t = time.perf_counter()
        img1 = self._load(pair.image1, pair.key, "image 1")
        img2 = self._load(pair.image2, pair.key, "image 2")
        times["load"] = time.perf_counter() - t
        paths = (str(pair.image1), str(pair.image2)) if not isinstance(pair.image1, np.ndarray) and not isinstance(pair.image2, np.ndarray) else None
        result = PairResult(pair.key, EMPTY_BOXES, objects1, objects2, None, None, times=times, image_paths=paths)
        prepared = _Prepared(result=result)
        if not objects1 or not objects2:
            side = 1 if not objects1 else 2
            result.exit_reason = diff.why_no_objects(side) if diff is not None else f"no object words in objects{side}"
            return prepared

        # S1 whole-pair gate
        t = time.perf_counter()
        feats = self.clip.embed([img1.rgb, img2.rgb])
        similarity = float(cosine(feats[0:1], feats[1:2])[0])
        result.pair_similarity = similarity
        times["pair_gate"] = time.perf_counter() - t
        p = self.params.pair
        if not (p.min_score_1 <= similarity <= p.max_score_1):
            result.exit_reason = f"pair similarity {similarity:.4f} outside [{p.min_score_1}, {p.max_score_1}]"
            return prepared

        # D1: image 2 in image 1's frame, then S3 on both
        t = time.perf_counter()
        h, w = img1.shape
        rgb2 = img2.rgb if img2.shape == (h, w) else cv2.resize(img2.rgb, (w, h), interpolation=cv2.INTER_LINEAR)
        s = self.params.segment
        det1 = self.segmenter.segment(img1.bgr, s.imgsz, s.conf, s.iou)
        det2 = self.segmenter.segment(np.ascontiguousarray(rgb2[:, :, ::-1]), s.imgsz, s.conf, s.iou)
        times["segment"] = time.perf_counter() - t

        # S4 candidates: image-1 boxes, then image-2 boxes
        candidates = np.concatenate([det1.xywh, det2.xywh]).astype(np.float32)
        windows = [crop_window(b) for b in candidates]
        valid = np.array([_crop(img1.rgb, win).size > 0 and _crop(rgb2, win).size > 0 for win in windows], dtype=bool)
        result.candidate_boxes = candidates
        result.counts.update(
            boxes1=len(det1.xywh),
            boxes2=len(det2.xywh),
            candidates=len(candidates),
            degenerate=int((~valid).sum()),
            unique_windows=len({win for win, ok in zip(windows, valid) if ok}),
        )
        prepared.windows, prepared.valid = windows, valid
        prepared.image1, prepared.image2 = img1.rgb, rgb2
        prepared.passed = valid.copy()
        return prepared

    def _crop_image(self, image: np.ndarray, window: tuple[int, int, int, int]) -> np.ndarray:
        crop = np.ascontiguousarray(_crop(image, window))
        return jpeg_roundtrip(crop) if self.settings.jpeg_roundtrip else crop

    @staticmethod
    def _unique(prepared: list[_Prepared]) -> list[tuple[int, tuple[int, int, int, int]]]:
        """(pair index, window) of every distinct still-passing window, first-seen order."""
        seen: set[tuple[int, tuple[int, int, int, int]]] = set()
        order = []
        for i, p in enumerate(prepared):
            if p.passed is None:
                continue
            for win, ok in zip(p.windows, p.passed):
                if ok and (i, win) not in seen:
                    seen.add((i, win))
                    order.append((i, win))
        return order

    def _apply(self, prepared: list[_Prepared], decisions: dict[tuple[int, tuple[int, int, int, int]], bool], count_name: str) -> None:
        for i, p in enumerate(prepared):
            if p.passed is None:
                continue
            p.passed = np.array([ok and decisions.get((i, win), False) for win, ok in zip(p.windows, p.passed)], dtype=bool)
            p.result.counts[count_name] = int(p.passed.sum())

    def _timed(self, prepared: list[_Prepared], name: str, started: float) -> None:
        share = (time.perf_counter() - started) / max(1, len(prepared))
        for p in prepared:
            if p.passed is not None:
                p.result.times[name] = p.result.times.get(name, 0.0) + share

    def _score(self, prepared: list[_Prepared]) -> None:
        active = [p for p in prepared if p.passed is not None]
        if not active:
            return
        # S6 crop-pair gate: CLIP on both crops of each distinct window
        t = time.perf_counter()
        todo = self._unique(prepared)
        decisions: dict = {}
        if todo:
            crops1 = [self._crop_image(prepared[i].image1, win) for i, win in todo]
            crops2 = [self._crop_image(prepared[i].image2, win) for i, win in todo]
            sims = cosine(self.clip.embed(crops1), self.clip.embed(crops2))
            lo, hi = self.params.pair.min_score_2, self.params.pair.max_score_2
            decisions = {key: bool(lo <= s <= hi) for key, s in zip(todo, sims)}
            for (i, win), sim in zip(todo, sims):
                prepared[i].evidence.setdefault(win, {})["crop_similarity"] = float(sim)
                if self.settings.diagnostics:
                    prepared[i].result.diagnostics.setdefault("crop_pair", {})[win] = float(sim)
        self._apply(prepared, decisions, "after_crop_pair_gate")
        self._timed(prepared, "crop_pair_gate", t)

        # S5 on crop 1, then on crop 2 of the survivors
        for side, count_name in ((1, "after_itm_image1"), (2, "after_itm_image2")):
            t = time.perf_counter()
            todo = self._unique(prepared)
            decisions = {}
            if todo:
                images = [self._crop_image(prepared[i].image1 if side == 1 else prepared[i].image2, win) for i, win in todo]
                embeds = self.blip.encode_images(images)
                words = [prepared[i].result.objects1 if side == 1 else prepared[i].result.objects2 for i, _ in todo]
                sinks = [self._sink(prepared[i].result, f"itm_image{side}", win) for i, win in todo]
                matches = self._match_any(embeds, words, sinks)
                for (i, win), match in zip(todo, matches):
                    if match is not None:
                        prepared[i].evidence[win][f"word{side}"], prepared[i].evidence[win][f"itm{side}"] = match
                decisions = {key: match is not None for key, match in zip(todo, matches)}
            self._apply(prepared, decisions, count_name)
            self._timed(prepared, f"itm_image{side}", t)

    def _sink(self, result: PairResult, name: str, window: tuple[int, int, int, int]) -> _WindowScores | None:
        """Where _match_any records (window, word) -> probability, or None without diagnostics."""
        if not self.settings.diagnostics:
            return None
        return _WindowScores(result.diagnostics.setdefault(name, {}), window)

    def _match_any(self, embeds: np.ndarray, words_per_crop: list[list[str]], sinks: list["_WindowScores | None"]) -> list[tuple[str, float] | None]:
        """For each crop: the first of its words (in its list's order) whose probability lies in
        [min_score, max_score], with that probability; None if no word passes.

        In rounds: round r tries the r-th word of every crop still undecided, one ITM call per
        distinct word, so each crop tries its words in its own order and stops at the first that
        passes, as the original does, whatever other pairs share the batch.
        """
        lo, hi = self.params.matching.min_score, self.params.matching.max_score
        matched: list[tuple[str, float] | None] = [None] * len(embeds)
        rounds = max((len(words) for words in words_per_crop), default=0)
        for r in range(rounds):
            by_word: dict[str, list[int]] = {}
            for k, words in enumerate(words_per_crop):
                if matched[k] is None and r < len(words) and words[r] not in words[:r]:  # a repeated word cannot pass now
                    by_word.setdefault(words[r], []).append(k)
            for word, idx in by_word.items():
                probs = self.blip.score(embeds[idx], word)
                for k, p in zip(idx, probs):
                    if sinks[k] is not None:
                        sinks[k].record(word, float(p))
                    if lo <= float(p) <= hi:
                        matched[k] = (word, float(p))
        return matched

    def _finish(self, prepared: _Prepared) -> PairResult:
        result = prepared.result
        if prepared.passed is None:
            return result
        t = time.perf_counter()
        survivors = [int(k) for k in np.flatnonzero(prepared.passed)]
        assert result.candidate_boxes is not None
        kept_local = bx.greedy_overlap_filter(result.candidate_boxes[survivors], self.params.overlap_iou) if survivors else np.zeros(0, dtype=np.int64)
        result.survivors = survivors
        result.kept = [survivors[k] for k in kept_local]
        result.boxes = result.candidate_boxes[result.kept].astype(np.float32).reshape(-1, 4)
        boxes1 = result.counts.get("boxes1", 0)
        result.evidence = []
        for k in result.kept:
            e = prepared.evidence[prepared.windows[k]]
            result.evidence.append(BoxEvidence(k, 1 if k < boxes1 else 2, e["word1"], e["itm1"], e["word2"], e["itm2"], e["crop_similarity"]))
        result.counts["kept"] = len(result.kept)
        result.times["overlap"] = time.perf_counter() - t
        return result
