"""S1-S8 of DESIGN.md on onnxruntime, with the execution plan of section 4.

Plan per batch of pairs:
  prepare each pair:  images -> S2 objects (exit if either list is empty) -> S1 CLIP pair gate
                      (exit outside the interval) -> image 2 resized to image 1 (D1) ->
                      S3 FastSAM on both -> S4 candidates and crop windows (a CandidateLedger)
  score all pairs together, cheapest rejection first, each unique crop once:
      S6 CLIP crop-pair gate  (2 x CLIP per unique window)
      S5 BLIP on crop 1       (only S6 survivors; one vision pass per crop, words reuse it,
                               a crop stops at its first passing word)
      S5 BLIP on crop 2       (only crop-1 survivors)
  finish each pair:   S7 greedy overlap removal in candidate order -> S8 boxes.
S5 (two sides) and S6 are ANDed tests of the same candidate, so this order gives the set the
original's order gives.

On several workers (imgdiff_onnx.engine.parallel) the model calls of each step run at once: the crop
chunks of each gate (and the two FastSAM images of a pair with EngineSettings.segment_together;
by default they run one after the other, each on all the cores). (Whole pairs per worker measured
slower than this, see benchmarks/ARCHIVE.md.) Results do not depend on the number of workers
(tested).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from . import boxes as bx
from . import memory
from .band import BandTally, near
from .captions import CaptionDifference
from .decide import BandSpec, decide, pair_exit_reason
from .manifest import source_mismatches
from ..errors import ModelRunError, ParameterError
from ..imageio import ImageLoadError, LoadedImage, load_image, same_file
from .modelset import ModelSet, SessionSettings
from .models.clip import ClipImageEncoder, cosine
from ..pairs import EMPTY_BOXES, BoxEvidence, ImageSource, PairError, PairFailure, PairInput, PairResult, ScoreSheet
from .parallel import Workers
from ..params import OperatorParams
from ..settings import PAIRS_PER_BATCH, EngineSettings
from .stages.crops import Crops, Window, crop_window, distinct, identical, nonempty
from .stages.ledger import CandidateLedger
from .stages.matching import first_matching_words
from .stages.objects import pair_objects

__all__ = ["DifferenceAreaGenerator", "EngineSettings", "PairError", "PairFailure", "PairInput", "PairResult", "crop_window"]

log = logging.getLogger(__name__)


@dataclass
class _KeptScores:
    """Keeping scores (EngineSettings.keep_scores): what a pair's sheet is built from."""

    pair: np.ndarray  # [similarity, fp32 re-score or NaN]
    pair_identical: bool
    crop: dict[Window, tuple[np.ndarray, bool]] = field(default_factory=dict)  # window -> ([score, fp32], same pixels)
    itm: dict[int, dict[tuple[Window, str], np.ndarray]] = field(default_factory=lambda: {1: {}, 2: {}})  # side -> (window, word) -> [p, fp32]


@dataclass
class _Pair:
    """A pair between S1-S4 and S7. `ledger` is None when the pair exited before crop scoring
    (result.exit_reason says why): then there is nothing to score or finish."""

    result: PairResult
    ledger: CandidateLedger | None = None
    image1: np.ndarray | None = None  # RGB
    image2: np.ndarray | None = None  # RGB, resized to image 1 (D1)
    kept: _KeptScores | None = None  # keeping scores: every score computed, for the sheet


@dataclass
class BandPrice:
    """What a banded model's scores have cost in this run: seconds in its int8 graphs and the
    scores they gave, seconds in its fp32 graphs and the scores re-scored there. `over()`: int8 +
    fp32 has cost more than fp32 alone would have (fp32's seconds per re-score x every score),
    once enough of both were seen for the estimate to mean something, and at least half the
    scores fell in the band (a threshold in the dense part of the scores). The share floor keeps
    an ordinary run (~1% re-scored) banded on every CPU; a CPU whose int8 graphs are slower than
    fp32 at low shares is what `validate` finds and answers with a precision. Acted on only with
    EngineSettings.band_switch (off by default: the switch's point depends on timings)."""

    MIN_SCORED = 32
    MIN_RESCORED = 8
    MIN_SHARE = 0.5

    int8_s: float = 0.0
    fp32_s: float = 0.0
    scored: int = 0
    rescored: int = 0

    def add(self, int8_s: float, fp32_s: float, scored: int, rescored: int) -> None:
        self.int8_s += int8_s
        self.fp32_s += fp32_s
        self.scored += scored
        self.rescored += rescored

    def fp32_alone(self) -> float | None:
        """Seconds fp32 alone would have taken for every score, None before enough were seen."""
        if self.scored < self.MIN_SCORED or self.rescored < self.MIN_RESCORED:
            return None
        return self.fp32_s / self.rescored * self.scored

    def over(self) -> bool:
        alone = self.fp32_alone()
        return alone is not None and self.rescored >= self.MIN_SHARE * self.scored and self.int8_s + self.fp32_s > alone


def _deciding(scores: np.ndarray) -> np.ndarray:
    """The score that decides from [score, fp32 re-score or NaN] rows: the fp32 one where there is one."""
    return np.where(np.isnan(scores[..., 1]), scores[..., 0], scores[..., 1])


class DifferenceAreaGenerator:
    """The Img-Diff difference-area operator on onnxruntime.

    models: a model folder, or a ModelSet (which builds the sessions and the three models: a
    subclass may supply its own, as the PyTorch reference engine and the parity tests do);
    params: what the operator computes (the original's arguments); settings: how it runs.

    >>> gen = DifferenceAreaGenerator("models/")                                 # doctest: +SKIP
    >>> result = gen.process(PairInput("a.jpg", "b.jpg", "A cat.", "A dog."))    # doctest: +SKIP
    >>> result.boxes  # float32 (K, 4) centre xywh                               # doctest: +SKIP

    One generator may be shared by threads (e.g. a web service's request handlers): their calls
    run one at a time, in full, each on the cores the settings give it. For calls at once, build
    one generator per thread (each loads its own sessions, ~1.2 GB with full-size models).
    """

    def __init__(
        self,
        models: str | Path | ModelSet,
        params: OperatorParams | None = None,
        settings: EngineSettings | None = None,
    ):
        self.settings = settings or EngineSettings()
        self.params = params or OperatorParams()
        # calls from several threads run one at a time: each already uses every core it was given
        # (settings.workers x threads), and the stages share buffers and the worker pool
        self._calls = threading.RLock()
        started = time.perf_counter()
        if self.settings.memory_release == "mmap":
            memory.return_freed_memory()  # before loading: the graphs' load-time copies are unmapped when freed
        self.models = models if isinstance(models, ModelSet) else ModelSet(models, self.settings.precision, self.settings.model_check)
        n_workers, threads = self.settings.parallelism()
        self.workers = Workers(n_workers)
        sessions = SessionSettings(threads=threads, cpu_mem_arena=self.settings.memory_arena, mem_pattern=self.settings.memory_pattern)
        segment = replace(
            sessions,
            threads=threads if self.settings.segment_together else n_workers * threads,  # one image at a time: all the cores
            shrinking_arena=self.settings.fastsam_arena,
        )
        self.components = components = self.models.components(sessions, self.settings.crop_batch_size, self.workers, segment)
        self.clip, self.blip, self.segmenter = components.clip, components.blip, components.segmenter
        self.fp32 = components.fp32  # the fp32 models of the banded ones, loaded at their first score in the band
        self.band = self.models.manifest.guard_band if self.fp32 is not None else None
        self.band_price = {"clip": BandPrice(), "blip": BandPrice()}  # what each banded model's scores cost so far
        self.fp32_instead: set[str] = set()  # banded models switched to fp32 for the rest of the run (settings.band_switch)
        if self.settings.warm_up:
            self.blip.warm_up()
        self._release_memory()
        self.load_seconds = time.perf_counter() - started
        log.info(
            "loaded graphs from %s in %.2f s: precision %s (%s); %d worker(s) x %d thread(s), FastSAM %s; memory release %s, huge pages %s%s",
            self.models.folder, self.load_seconds, self.models.precision, self.models.precision_origin, n_workers, threads,
            ("two images at once" if self.settings.segment_together else "one image at a time")
            + (", shrinking arena" if self.settings.fastsam_arena else ""),
            self.settings.memory_release, "on" if memory.huge_pages_active() else "off",
            "".join(f"; {g} {info.precision} AMX variant" for g, info in self.models.graphs.items() if info.amx_variant),
        )  # fmt: skip
        if self.models.random_init:
            log.warning("model folder %s holds RANDOM-INIT weights: boxes are meaningless", self.models.folder)
        else:  # the model-source keys of the parameters (a recipe's hf_clip, hf_blip, model_path) against the folder's export
            wanted = {"clip": self.params.pair.hf_clip, "blip": self.params.matching.hf_blip, "fastsam": self.params.segment.model_path}
            for mismatch in source_mismatches(self.models.manifest, wanted):
                log.warning("%s; the folder's model runs (export the one the parameters name to run it)", mismatch)

    # ---- public API -------------------------------------------------------------------

    def process(self, pair: PairInput) -> PairResult:
        """One pair; raises PairError for a bad record."""
        with self._calls:
            prepared = self._prepare(pair)
            self._score([prepared])
            self._check_band_price()
            return self._finish(prepared)

    def process_many(self, pairs: Iterable[PairInput], pairs_per_batch: int = PAIRS_PER_BATCH) -> Iterator[PairResult | PairFailure]:
        """Results in input order; crop scoring is batched across `pairs_per_batch` pairs.

        A bad record yields a PairFailure and the run goes on.
        """
        if pairs_per_batch < 1:
            raise ParameterError(f"pairs_per_batch must be >= 1, got {pairs_per_batch}", "pairs_per_batch")
        batch: list[PairInput] = []
        for pair in pairs:
            batch.append(pair)
            if len(batch) == pairs_per_batch:
                yield from self._process_batch(batch)
                batch = []
        if batch:
            yield from self._process_batch(batch)

    def close(self) -> None:
        """Stop the worker threads (they are also stopped at exit)."""
        self.workers.close()

    def _release_memory(self) -> None:
        """Between stages: hand the allocator's free pages back (EngineSettings.memory_release)."""
        if self.settings.memory_release != "off":
            memory.trim()

    # ---- batch --------------------------------------------------------------------------

    def _prepare_or_fail(self, pair: PairInput) -> _Pair | PairFailure:
        try:
            return self._prepare(pair)
        except PairError as exc:
            return PairFailure(key=pair.key, error=exc.message)
        except ModelRunError as exc:
            return PairFailure(key=pair.key, error=str(exc))

    def _process_batch(self, pairs: list[PairInput]) -> list[PairResult | PairFailure]:
        """One batch, holding the calls lock (a list: the lock is not held while the caller of
        process_many consumes the results)."""
        with self._calls:
            prepared = [self._prepare_or_fail(pair) for pair in pairs]
            ready = [p for p in prepared if isinstance(p, _Pair)]
            failed = self._score_isolating(ready)
            self._check_band_price()
            return [p if isinstance(p, PairFailure) else failed.get(id(p)) or self._finish(p) for p in prepared]

    def _score_isolating(self, ready: list[_Pair]) -> dict[int, PairFailure]:
        """Score the batch's crops together; if onnxruntime fails, score each pair alone, so that
        only the pair it fails on becomes an error (keyed by id() of its _Pair)."""
        saved = [p.ledger.snapshot() if p.ledger is not None else None for p in ready]
        try:
            self._score(ready)
            return {}
        except ModelRunError as exc:
            if len(ready) == 1:
                return {id(ready[0]): PairFailure(key=ready[0].result.key, error=str(exc))}
            log.warning("%s; scoring the %d pairs of the batch one by one", exc, len(ready))
        failed = {}
        for p, ledger in zip(ready, saved):
            p.ledger = ledger
            failed.update(self._score_isolating([p]))
        return failed

    # ---- S1-S4 ----------------------------------------------------------------------------

    def _load(self, source: ImageSource, key: str, which: str) -> LoadedImage:
        try:
            return load_image(source, which)
        except ImageLoadError as exc:
            raise PairError(key, f"{which}: {exc}") from None

    def _prepare(self, pair: PairInput) -> _Pair:
        times: dict[str, float] = {}
        t = time.perf_counter()
        if isinstance(pair.image1, (str, Path)) and isinstance(pair.image2, (str, Path)) and same_file(pair.image1, pair.image2):
            raise PairError(pair.key, f"image_path1 and image_path2 are the same file ({pair.image1})")
        objects1, objects2, diff = pair_objects(pair)
        times["captions"] = time.perf_counter() - t
        t = time.perf_counter()
        img1 = self._load(pair.image1, pair.key, "image 1")
        img2 = self._load(pair.image2, pair.key, "image 2")
        times["load"] = time.perf_counter() - t
        files = isinstance(pair.image1, (str, Path)) and isinstance(pair.image2, (str, Path))
        paths = (str(pair.image1), str(pair.image2)) if files else None
        result = PairResult(pair.key, EMPTY_BOXES, objects1, objects2, None, None, times=times, image_paths=paths)
        if not objects1 or not objects2:
            result.exit_reason = _no_objects_reason(diff, 1 if not objects1 else 2)
            return _Pair(result)

        t = time.perf_counter()  # S1 whole-pair gate
        pair_scores, same = self._pair_scores(result, img1.rgb, img2.rgb)
        result.pair_similarity = similarity = 1.0 if same else float(_deciding(pair_scores))
        times["pair_gate"] = time.perf_counter() - t
        reason = pair_exit_reason(similarity, self.params.pair)
        if reason is not None and not self.settings.keep_scores:  # keeping scores: every gate open, the sheet decides
            result.exit_reason = reason
            return _Pair(result)

        t = time.perf_counter()  # D1: image 2 in image 1's frame, then S3 on both
        h, w = img1.shape
        rgb2 = img2.rgb if img2.shape == (h, w) else cv2.resize(img2.rgb, (w, h), interpolation=cv2.INTER_LINEAR)
        s = self.params.segment
        images = [img1.bgr, np.ascontiguousarray(rgb2[:, :, ::-1])]

        def segment(bgr: np.ndarray):
            return self.segmenter.segment(bgr, s.imgsz, s.conf, s.iou)

        det1, det2 = self.workers.map(segment, images) if self.settings.segment_together else [segment(bgr) for bgr in images]
        times["segment"] = time.perf_counter() - t
        self._release_memory()

        # S4 candidates: image-1 boxes, then image-2 boxes
        candidates = np.concatenate([det1.xywh, det2.xywh]).astype(np.float32)
        windows = [crop_window(b) for b in candidates]
        ledger = CandidateLedger(windows, np.array([nonempty(win, img1.rgb, rgb2) for win in windows], dtype=bool))
        result.candidate_boxes = candidates
        result.counts.update(
            boxes1=len(det1.xywh),
            boxes2=len(det2.xywh),
            candidates=len(candidates),
            degenerate=int((~ledger.valid).sum()),
            unique_windows=len(ledger.pending()),
        )
        kept = _KeptScores(pair_scores, same) if self.settings.keep_scores else None
        return _Pair(result, ledger, img1.rgb, rgb2, kept)

    def _pair_scores(self, result: PairResult, rgb1: np.ndarray, rgb2: np.ndarray) -> tuple[np.ndarray, bool]:
        """S1: ([CLIP similarity of the whole images, its fp32 re-score or NaN], same pixels).
        The same pixels have similarity 1.0 without CLIP; where CLIP is banded, a score in the band
        is scored again in fp32 (and result.band counts it)."""
        scores = np.array([1.0, np.nan])
        if rgb1.shape == rgb2.shape and np.array_equal(rgb1, rgb2):
            return scores, True
        t = time.perf_counter()
        scores[0] = float(cosine(*np.split(self.clip.embed([rgb1, rgb2]), 2))[0])
        if self._banded("clip"):
            int8_s = time.perf_counter() - t
            p = self.params.pair
            rescore = bool(near(scores[0], p.min_score_1, p.max_score_1, self.band.margin("pair_similarity")))  # type: ignore[union-attr]
            t = time.perf_counter()
            if rescore:
                scores[1] = float(cosine(*np.split(self.fp32.clip.embed([rgb1, rgb2]), 2))[0])  # type: ignore[union-attr]
            self.band_price["clip"].add(int8_s, time.perf_counter() - t if rescore else 0.0, 1, int(rescore))
            result.band = {"pair_similarity": {"scored": 1, "rescored": int(rescore)}}
        return scores, False

    def _banded(self, model: str) -> bool:
        return self.fp32 is not None and self.fp32.has(model) and model not in self.fp32_instead

    def _check_band_price(self) -> None:
        """After a batch: a banded model whose band has cost more than fp32 alone would runs fp32
        from now on (its int8 graph released); the decisions are the same."""
        if not self.settings.band_switch or self.settings.keep_scores or self.fp32 is None:
            return
        for model in ("clip", "blip"):
            price = self.band_price[model]
            if not self._banded(model) or not price.over():
                continue
            fp32 = self.fp32.clip if model == "clip" else self.fp32.blip
            self.fp32_instead.add(model)
            setattr(self, model, fp32)  # self.clip or self.blip: the int8 graph is no longer held
            self.components = replace(self.components, **{model: fp32})
            log.warning("%s: %d of %d scores fell in the guard band; int8 + fp32 took %.1f s where fp32 alone would have taken "
                        "%.1f s, so %s runs fp32 from now on (the same decisions)", model.upper(), price.rescored, price.scored,
                        price.int8_s + price.fp32_s, price.fp32_alone(), model.upper())  # fmt: skip

    # ---- S6, S5 ---------------------------------------------------------------------------

    def _score(self, pairs: list[_Pair]) -> None:
        """S6 then S5 on each side, every gate over the distinct windows of all the pairs together,
        `windows_per_step` windows at a time. Keeping scores: every score of every window, no gate."""
        active = [p for p in pairs if p.ledger is not None]
        step = self.settings.windows_per_step  # bounds the crops and embeddings held at once
        if self.settings.keep_scores:
            todo = [(p, win) for p in active for win in p.ledger.pending()]  # type: ignore[union-attr]
            for block in (todo[i : i + step] for i in range(0, len(todo), step)):
                self._keep_block(block)
                self._release_memory()
            return
        for gate in ("crop_pair_gate", "itm_image1", "itm_image2"):
            t = time.perf_counter()
            todo = [(p, win) for p in active for win in p.ledger.pending()]  # type: ignore[union-attr]
            passing = []
            for block in (todo[i : i + step] for i in range(0, len(todo), step)):
                if gate == "crop_pair_gate":
                    passing += self._crop_pair_gate(block)
                else:
                    passing += self._itm_gate(block, side=1 if gate == "itm_image1" else 2)
                self._release_memory()
            share = (time.perf_counter() - t) / max(1, len(pairs))
            for p in active:
                assert p.ledger is not None
                p.ledger.decide(gate, {win for q, win in passing if q is p})
                p.ledger.seconds[gate] = p.ledger.seconds.get(gate, 0.0) + share

    def _keep_block(self, block: list[tuple[_Pair, Window]]) -> None:
        """Keeping scores: the crop-pair similarity of each window and the ITM probability of each
        crop with every word of its side (imgdiff_onnx.runs.scores)."""
        t = time.perf_counter()
        scores, same = self._crop_pair_scores(block)
        for (p, win), s, k in zip(block, scores, same):
            p.kept.crop[win] = (s, k)  # type: ignore[union-attr]
        for side in (1, 2):
            score = self._itm_scorer(block, side)
            words = [p.result.objects1 if side == 1 else p.result.objects2 for p, _ in block]
            for word in dict.fromkeys(w for ws in words for w in ws):
                idx = [k for k, ws in enumerate(words) if word in ws]
                for k, s in zip(idx, score(word, idx)):
                    p, win = block[k]
                    p.kept.itm[side][(win, word)] = s  # type: ignore[union-attr]
        share = (time.perf_counter() - t) / max(1, len({id(p) for p, _ in block}))
        for p in {id(p): p for p, _ in block}.values():
            p.ledger.seconds["scores"] = p.ledger.seconds.get("scores", 0.0) + share  # type: ignore[union-attr]

    def _crop_pair_scores(self, todo: list[tuple[_Pair, Window]]) -> tuple[np.ndarray, list[bool]]:
        """S6 scores: ([CLIP similarity of the window's two crops, its fp32 re-score or NaN] per
        window, whether the two crops are the same pixels). The same pixels have similarity 1.0
        without CLIP; the others are scored each distinct crop once, and again in fp32 where CLIP
        is banded and the score is in the band."""
        lo, hi = self.params.pair.min_score_2, self.params.pair.max_score_2
        scores = np.full((len(todo), 2), np.nan)
        scores[:, 0] = 1.0
        same = [identical(p.image1, p.image2, win) for p, win in todo]  # type: ignore[arg-type]
        differ = np.array([k for k, s in enumerate(same) if not s], dtype=np.intp)
        if differ.size:
            items = [(todo[k][0].image1, todo[k][1]) for k in differ] + [(todo[k][0].image2, todo[k][1]) for k in differ]
            t = time.perf_counter()
            scores[differ, 0] = primary = self._crop_similarities(items, self.clip)  # type: ignore[arg-type]
            if self._banded("clip"):
                int8_s = time.perf_counter() - t
                band = near(primary, lo, hi, self.band.margin("crop_similarity"))  # type: ignore[union-attr]
                again = np.flatnonzero(band)
                t = time.perf_counter()
                if again.size:
                    n = len(differ)
                    scores[differ[again], 1] = self._crop_similarities([items[i] for i in again] + [items[n + i] for i in again], self.fp32.clip)  # type: ignore[union-attr,arg-type]
                self.band_price["clip"].add(int8_s, time.perf_counter() - t if again.size else 0.0, len(differ), int(again.size))
                for k, in_band in zip(differ, band):
                    todo[k][0].ledger.band.add("crop_similarity", 1, int(in_band))  # type: ignore[union-attr]
        return scores, same

    def _crop_pair_gate(self, todo: list[tuple[_Pair, Window]]) -> list[tuple[_Pair, Window]]:
        """S6: the windows whose crop-pair similarity is within [min_score_2, max_score_2]."""
        if not todo:
            return []
        lo, hi = self.params.pair.min_score_2, self.params.pair.max_score_2
        scores, same = self._crop_pair_scores(todo)
        sims = _deciding(scores)
        for (p, win), sim, s in zip(todo, sims, same):
            p.ledger.identical += s  # type: ignore[union-attr]
            p.ledger.note(win, crop_similarity=float(sim))  # type: ignore[union-attr]
            if self.settings.diagnostics:
                p.ledger.diagnostics.setdefault("crop_pair", {})[win] = float(sim)  # type: ignore[union-attr]
        return [item for item, sim in zip(todo, sims) if lo <= sim <= hi]

    def _crop_similarities(self, items: list[tuple[np.ndarray, Window]], clip: ClipImageEncoder) -> np.ndarray:
        """Cosine similarity of crop k and crop n + k of 2n crops, each distinct crop embedded once."""
        first, rows = distinct(items)
        feats = clip.embed(Crops([items[i] for i in first], self.settings.jpeg_roundtrip))[rows]
        n = len(items) // 2
        return cosine(feats[:n], feats[n:])

    def _itm_scorer(self, todo: list[tuple[_Pair, Window]], side: int) -> Callable[[str, list[int]], np.ndarray]:
        """S5 scores on one side: a function of (word, which of `todo`'s crops) giving [ITM
        probability, its fp32 re-score or NaN] per crop. Each distinct crop is encoded once (now);
        where BLIP is banded, a probability in the band is computed again in fp32 (the crop encoded
        in fp32 once, the first time it is needed)."""
        items = [(p.image1 if side == 1 else p.image2, win) for p, win in todo]
        first, rows = distinct(items)  # type: ignore[arg-type]
        t = time.perf_counter()
        embeds = self.blip.encode_images(Crops([items[i] for i in first], self.settings.jpeg_roundtrip))  # type: ignore[misc]
        m = self.params.matching
        banded = self._banded("blip")
        price = self.band_price["blip"]
        if banded:
            price.add(time.perf_counter() - t, 0.0, 0, 0)  # the crops' int8 encoding: part of the int8 scores' cost
        fp32_embeds: dict[int, np.ndarray] = {}  # distinct crop -> its fp32 embedding

        def score(word: str, idx: list[int]) -> np.ndarray:
            out = np.full((len(idx), 2), np.nan)
            t = time.perf_counter()
            out[:, 0] = probs = self.blip.score(embeds, word, [int(rows[k]) for k in idx])
            if not banded:
                return out
            int8_s = time.perf_counter() - t
            band = near(probs, m.min_score, m.max_score, self.band.margin("itm_probability"))  # type: ignore[union-attr]
            for k, in_band in zip(idx, band):
                todo[k][0].ledger.band.add("itm_probability", 1, int(in_band))  # type: ignore[union-attr]
            again = [int(rows[idx[j]]) for j in np.flatnonzero(band)]
            t = time.perf_counter()
            if again:
                new = sorted(set(again) - fp32_embeds.keys())
                if new:
                    fresh = self.fp32.blip.encode_images(Crops([items[first[r]] for r in new], self.settings.jpeg_roundtrip))  # type: ignore[union-attr,misc]
                    fp32_embeds.update(zip(new, fresh))
                out[band, 1] = self.fp32.blip.score(np.stack([fp32_embeds[r] for r in again]), word)  # type: ignore[union-attr]
            price.add(int8_s, time.perf_counter() - t if again else 0.0, len(idx), len(again))
            return out

        return score

    def _itm_gate(self, todo: list[tuple[_Pair, Window]], side: int) -> list[tuple[_Pair, Window]]:
        """S5 on one side: some word of the pair's objects list of that side matches the crop."""
        if not todo:
            return []
        scorer = self._itm_scorer(todo, side)
        words = [p.result.objects1 if side == 1 else p.result.objects2 for p, _ in todo]
        m = self.params.matching

        def record(k: int, word: str, probability: float) -> None:
            p, win = todo[k]
            p.ledger.diagnostics.setdefault(f"itm_image{side}", {})[(win, word)] = probability  # type: ignore[union-attr]

        matches = first_matching_words(words, lambda word, idx: _deciding(scorer(word, idx)), m.min_score, m.max_score,
                                       record if self.settings.diagnostics else None)  # fmt: skip
        for (p, win), match in zip(todo, matches):
            if match is not None:
                p.ledger.note(win, **{f"word{side}": match[0], f"itm{side}": match[1]})  # type: ignore[union-attr]
        return [item for item, match in zip(todo, matches) if match is not None]

    # ---- S7, S8 ---------------------------------------------------------------------------

    def _finish(self, pair: _Pair) -> PairResult:
        result, ledger = pair.result, pair.ledger
        if ledger is None:
            return result
        if pair.kept is not None:
            return self._finish_from_sheet(pair)
        t = time.perf_counter()
        assert result.candidate_boxes is not None
        survivors = ledger.survivors()
        kept_local = bx.greedy_overlap_filter(result.candidate_boxes[survivors], self.params.overlap_iou) if survivors else np.zeros(0, dtype=np.int64)
        result.survivors = survivors
        result.kept = [survivors[k] for k in kept_local]
        result.boxes = result.candidate_boxes[result.kept].astype(np.float32).reshape(-1, 4)
        boxes1 = result.counts.get("boxes1", 0)
        result.evidence = []
        for k in result.kept:
            e = ledger.evidence[ledger.windows[k]]
            result.evidence.append(BoxEvidence(k, 1 if k < boxes1 else 2, e["word1"], e["itm1"], e["word2"], e["itm2"], e["crop_similarity"]))
        result.counts.update({f"after_{gate}": n for gate, n in ledger.after.items()}, kept=len(result.kept))
        result.counts["identical_windows"] = ledger.identical
        result.times.update(ledger.seconds)
        result.times["overlap"] = time.perf_counter() - t
        result.diagnostics = ledger.diagnostics
        if ledger.band.scored:
            tally = BandTally.empty()
            tally.merge(result.band or {})
            tally.merge(ledger.band.to_json())
            result.band = tally.to_json()
        return result


    def _finish_from_sheet(self, pair: _Pair) -> PairResult:
        """Keeping scores: the pair's sheet, and the result the gates give from it (as a gated run)."""
        result, ledger, kept = pair.result, pair.ledger, pair.kept
        assert ledger is not None and kept is not None and result.candidate_boxes is not None
        t = time.perf_counter()
        windows = list(dict.fromkeys(ledger.windows))
        where = {win: w for w, win in enumerate(windows)}
        valid = np.zeros(len(windows), dtype=bool)
        valid[[where[win] for win, ok in zip(ledger.windows, ledger.valid) if ok]] = True
        crop = np.full((len(windows), 2), np.nan)
        same = np.zeros(len(windows), dtype=bool)
        for win, (score, identical_pixels) in kept.crop.items():
            crop[where[win]], same[where[win]] = score, identical_pixels
        itm = {}
        for side, words in ((1, result.objects1), (2, result.objects2)):
            itm[side] = np.full((len(windows), len(words), 2), np.nan)
            for (win, word), score in kept.itm[side].items():
                itm[side][where[win], [j for j, w in enumerate(words) if w == word]] = score
        sheet = ScoreSheet(kept.pair, kept.pair_identical, result.candidate_boxes, result.counts["boxes1"],
                           np.array([where[win] for win in ledger.windows], dtype=np.int32), valid, same, crop, itm[1], itm[2])  # fmt: skip
        spec = BandSpec(frozenset(m for m in ("clip", "blip") if self._banded(m)), self.band.to_margins() if self.band else {})
        decided = decide(sheet, result.key, result.objects1, result.objects2, self.params, spec).result
        decided.times, decided.image_paths, decided.scores = dict(result.times), result.image_paths, sheet
        decided.times.update(ledger.seconds, decide=time.perf_counter() - t)
        return decided


def _no_objects_reason(diff: CaptionDifference | None, side: int) -> str:
    return diff.why_no_objects(side) if diff is not None else f"no object words in objects{side}"
