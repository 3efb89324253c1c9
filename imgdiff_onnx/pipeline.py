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

On several workers (imgdiff_onnx.parallel) the model calls of each step run at once: the crop
chunks of each gate (and the two FastSAM images of a pair with EngineSettings.segment_together;
by default they run one after the other, each on all the cores). (Whole pairs per worker measured
slower than this, see benchmarks/ARCHIVE.md.) Results do not depend on the number of workers
(tested).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from . import boxes as bx
from . import memory
from .band import BandTally, near
from .captions import CaptionDifference
from .errors import ModelRunError, ParameterError
from .imageio import ImageLoadError, LoadedImage, from_array, load_image_file
from .modelset import Components, ModelSet, SessionSettings
from .models.clip import ClipImageEncoder, cosine
from .pairs import EMPTY_BOXES, BoxEvidence, ImageSource, PairError, PairFailure, PairInput, PairResult
from .parallel import Workers
from .params import OperatorParams
from .runfile import same_file
from .settings import EngineSettings
from .stages.crops import Crops, Window, crop_window, distinct, identical, nonempty
from .stages.ledger import CandidateLedger
from .stages.matching import first_matching_words
from .stages.objects import pair_objects

__all__ = ["DifferenceAreaGenerator", "EngineSettings", "PairError", "PairFailure", "PairInput", "PairResult", "crop_window"]

log = logging.getLogger(__name__)


@dataclass
class _Pair:
    """A pair between S1-S4 and S7. `ledger` is None when the pair exited before crop scoring
    (result.exit_reason says why): then there is nothing to score or finish."""

    result: PairResult
    ledger: CandidateLedger | None = None
    image1: np.ndarray | None = None  # RGB
    image2: np.ndarray | None = None  # RGB, resized to image 1 (D1)


class DifferenceAreaGenerator:
    """The Img-Diff difference-area operator on onnxruntime.

    models: a model folder (or a ModelSet); params: what the operator computes (the original's
    arguments); settings: how it runs; components: the three models, when not built from the
    folder (tests and the PyTorch reference engine inject their own).

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
        components: Components | None = None,
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
        built_here = components is None
        if built_here:
            sessions = SessionSettings(threads=threads, cpu_mem_arena=self.settings.memory_arena, mem_pattern=self.settings.memory_pattern)
            segment = replace(
                sessions,
                threads=threads if self.settings.segment_together else n_workers * threads,  # one image at a time: all the cores
                shrinking_arena=self.settings.fastsam_arena,
            )
            components = self.models.components(sessions, self.settings.crop_batch_size, self.workers, segment)
        self.components = components
        self.clip, self.blip, self.segmenter = components.clip, components.blip, components.segmenter
        self.fp32 = components.fp32  # the fp32 models of the banded ones, loaded at their first score in the band
        self.band = self.models.manifest.guard_band if self.fp32 is not None else None
        if built_here and self.settings.warm_up:
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

    # ---- public API -------------------------------------------------------------------

    def process(self, pair: PairInput) -> PairResult:
        """One pair; raises PairError for a bad record."""
        with self._calls:
            prepared = self._prepare(pair)
            self._score([prepared])
            return self._finish(prepared)

    def process_many(self, pairs: Iterable[PairInput], pairs_per_batch: int = 4) -> Iterator[PairResult | PairFailure]:
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
            if isinstance(source, np.ndarray):
                return from_array(source, f"{which} array")
            if not isinstance(source, (str, Path)) or str(source) == "":
                raise ImageLoadError(f"{which}: expected a path or an array, got {type(source).__name__}")
            return load_image_file(source)
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
        paths = None if isinstance(pair.image1, np.ndarray) or isinstance(pair.image2, np.ndarray) else (str(pair.image1), str(pair.image2))
        result = PairResult(pair.key, EMPTY_BOXES, objects1, objects2, None, None, times=times, image_paths=paths)
        if not objects1 or not objects2:
            result.exit_reason = _no_objects_reason(diff, 1 if not objects1 else 2)
            return _Pair(result)

        t = time.perf_counter()  # S1 whole-pair gate
        p = self.params.pair
        result.pair_similarity = similarity = self._pair_similarity(result, img1.rgb, img2.rgb)
        times["pair_gate"] = time.perf_counter() - t
        if not (p.min_score_1 <= similarity <= p.max_score_1):
            result.exit_reason = f"pair similarity {similarity:.4f} outside [{p.min_score_1}, {p.max_score_1}]"
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
        return _Pair(result, ledger, img1.rgb, rgb2)

    def _pair_similarity(self, result: PairResult, rgb1: np.ndarray, rgb2: np.ndarray) -> float:
        """S1: CLIP similarity of the whole images; 1.0 without CLIP when they are the same pixels;
        scored again in fp32 when CLIP is banded and the score is in the band."""
        if rgb1.shape == rgb2.shape and np.array_equal(rgb1, rgb2):
            return 1.0
        similarity = float(cosine(*np.split(self.clip.embed([rgb1, rgb2]), 2))[0])
        if self._banded("clip"):
            p = self.params.pair
            rescore = bool(near(similarity, p.min_score_1, p.max_score_1, self.band.margin("pair_similarity")))  # type: ignore[union-attr]
            if rescore:
                similarity = float(cosine(*np.split(self.fp32.clip.embed([rgb1, rgb2]), 2))[0])  # type: ignore[union-attr]
            result.band = {"pair_similarity": {"scored": 1, "rescored": int(rescore)}}
        return similarity

    def _banded(self, model: str) -> bool:
        return self.fp32 is not None and self.fp32.has(model)

    # ---- S6, S5 ---------------------------------------------------------------------------

    def _score(self, pairs: list[_Pair]) -> None:
        """S6 then S5 on each side, every gate over the distinct windows of all the pairs together,
        `windows_per_step` windows at a time."""
        active = [p for p in pairs if p.ledger is not None]
        for gate in ("crop_pair_gate", "itm_image1", "itm_image2"):
            t = time.perf_counter()
            todo = [(p, win) for p in active for win in p.ledger.pending()]  # type: ignore[union-attr]
            passing = []
            step = self.settings.windows_per_step  # bounds the crops and embeddings held at once
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

    def _crop_pair_gate(self, todo: list[tuple[_Pair, Window]]) -> list[tuple[_Pair, Window]]:
        """S6: CLIP similarity of the two crops of each window within [min_score_2, max_score_2].
        Two crops of the same pixels have similarity 1.0 without CLIP; the others are scored
        each distinct crop once, and again in fp32 where CLIP is banded and the score is in the band."""
        if not todo:
            return []
        lo, hi = self.params.pair.min_score_2, self.params.pair.max_score_2
        sims = np.ones(len(todo), dtype=np.float64)
        same = [identical(p.image1, p.image2, win) for p, win in todo]  # type: ignore[arg-type]
        differ = [k for k, s in enumerate(same) if not s]
        for (p, _), s in zip(todo, same):
            p.ledger.identical += s  # type: ignore[union-attr]
        if differ:
            items = [(todo[k][0].image1, todo[k][1]) for k in differ] + [(todo[k][0].image2, todo[k][1]) for k in differ]
            scores = self._crop_similarities(items, self.clip)  # type: ignore[arg-type]
            if self._banded("clip"):
                band = near(scores, lo, hi, self.band.margin("crop_similarity"))  # type: ignore[union-attr]
                again = np.flatnonzero(band)
                if again.size:
                    n = len(differ)
                    scores[again] = self._crop_similarities([items[i] for i in again] + [items[n + i] for i in again], self.fp32.clip)  # type: ignore[union-attr,arg-type]
                for k, in_band in zip(differ, band):
                    todo[k][0].ledger.band.add("crop_similarity", 1, int(in_band))  # type: ignore[union-attr]
            sims[differ] = scores
        for (p, win), sim in zip(todo, sims):
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

    def _itm_gate(self, todo: list[tuple[_Pair, Window]], side: int) -> list[tuple[_Pair, Window]]:
        """S5 on one side: some word of the pair's objects list of that side matches the crop.
        Each distinct crop is encoded once; where BLIP is banded, a probability in the band is
        computed again in fp32 (the crop encoded in fp32 once, the first time it is needed)."""
        if not todo:
            return []
        items = [(p.image1 if side == 1 else p.image2, win) for p, win in todo]
        first, rows = distinct(items)  # type: ignore[arg-type]
        embeds = self.blip.encode_images(Crops([items[i] for i in first], self.settings.jpeg_roundtrip))  # type: ignore[misc]
        words = [p.result.objects1 if side == 1 else p.result.objects2 for p, _ in todo]
        m = self.params.matching
        banded = self._banded("blip")
        fp32_embeds: dict[int, np.ndarray] = {}  # distinct crop -> its fp32 embedding

        def score(word: str, idx: list[int]) -> np.ndarray:
            probs = self.blip.score(embeds, word, [int(rows[k]) for k in idx])
            if not banded:
                return probs
            band = near(probs, m.min_score, m.max_score, self.band.margin("itm_probability"))  # type: ignore[union-attr]
            for k, in_band in zip(idx, band):
                todo[k][0].ledger.band.add("itm_probability", 1, int(in_band))  # type: ignore[union-attr]
            again = [int(rows[idx[j]]) for j in np.flatnonzero(band)]
            if again:
                new = sorted(set(again) - fp32_embeds.keys())
                if new:
                    fresh = self.fp32.blip.encode_images(Crops([items[first[r]] for r in new], self.settings.jpeg_roundtrip))  # type: ignore[union-attr,misc]
                    fp32_embeds.update(zip(new, fresh))
                probs[band] = self.fp32.blip.score(np.stack([fp32_embeds[r] for r in again]), word)  # type: ignore[union-attr]
            return probs

        def record(k: int, word: str, probability: float) -> None:
            p, win = todo[k]
            p.ledger.diagnostics.setdefault(f"itm_image{side}", {})[(win, word)] = probability  # type: ignore[union-attr]

        matches = first_matching_words(words, score, m.min_score, m.max_score, record if self.settings.diagnostics else None)
        for (p, win), match in zip(todo, matches):
            if match is not None:
                p.ledger.note(win, **{f"word{side}": match[0], f"itm{side}": match[1]})  # type: ignore[union-attr]
        return [item for item, match in zip(todo, matches) if match is not None]

    # ---- S7, S8 ---------------------------------------------------------------------------

    def _finish(self, pair: _Pair) -> PairResult:
        result, ledger = pair.result, pair.ledger
        if ledger is None:
            return result
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


def _no_objects_reason(diff: CaptionDifference | None, side: int) -> str:
    return diff.why_no_objects(side) if diff is not None else f"no object words in objects{side}"
