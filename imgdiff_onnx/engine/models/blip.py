"""BLIP image-text matching on onnxruntime: encode crops once, score them against many words."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from ..parallel import Workers
from ..preprocess import ImageNormalization, normalize_batch
from .batching import map_chunks, run_graph


def match_probability(logits: np.ndarray) -> np.ndarray:
    """softmax(itm_logits)[:, 1], the ITM 'match' probability."""
    z = logits.astype(np.float32) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e[:, 1] / e.sum(axis=1)).astype(np.float32)


class BlipMatcher:
    """The `blip_vision` and `blip_itm` graphs: crops are encoded once and scored against words;
    calls are chunked as for CLIP and spread over `workers` when given."""

    def __init__(
        self,
        vision: ort.InferenceSession,
        itm: ort.InferenceSession,
        tokenizer_path: Path,
        norm: ImageNormalization,
        vision_batch_invariant: bool,
        itm_batch_invariant: bool,
        max_length: int = 512,
        batch_size: int = 8,
        workers: Workers | None = None,
    ):
        self._vision = vision
        self._itm = itm
        self._norm = norm
        self._vision_invariant = vision_batch_invariant
        self._itm_invariant = itm_batch_invariant
        self.batch_size = batch_size
        self._workers = workers
        self._tokenizer = Tokenizer.from_file(str(tokenizer_path))
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length)

    def encode_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """(N, tokens, hidden) image embeddings for N uint8 RGB images."""

        def run(chunk: list[np.ndarray]) -> np.ndarray:
            pixels = normalize_batch(chunk, self._norm)
            return run_graph(self._vision, "blip_vision", ["image_embeds"], {"pixel_values": pixels})[0]

        return map_chunks(images, run, self.batch_size, self._vision_invariant, self._workers)

    def warm_up(self) -> None:
        """One vision run on a blank crop (every crop is resized to the graph's one input shape),
        so that onnxruntime's first run of that shape, which plans the buffers of the later ones
        and holds several times their memory, happens now (EngineSettings.warm_up)."""
        self.encode_images([np.full((32, 32, 3), 128, dtype=np.uint8)])

    def tokens(self, word: str) -> np.ndarray:
        return np.asarray(self._tokenizer.encode(word).ids, dtype=np.int64)

    def score(self, embeds: np.ndarray, word: str, rows: Sequence[int] | None = None) -> np.ndarray:
        """p(match) of image embeddings with one word: (len(rows),) float32, for the embeddings
        `rows` of `embeds` (all of them when None). Each call gathers only its own rows, so no
        copy of the selected embeddings (1.8 MB per crop) is made up front.

        All rows share the word's token sequence, so no padding is involved.
        """
        tokens = self.tokens(word)
        selected: Sequence[int] = range(len(embeds)) if rows is None else rows

        def run(chunk: Sequence[int]) -> np.ndarray:
            image_embeds = embeds[chunk.start : chunk.stop] if isinstance(chunk, range) else embeds[np.asarray(chunk, dtype=np.intp)]
            ids = np.repeat(tokens[None], len(chunk), axis=0)
            feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "image_embeds": image_embeds}
            return run_graph(self._itm, "blip_itm", ["itm_logits"], feeds)[0]

        return match_probability(map_chunks(selected, run, self.batch_size, self._itm_invariant, self._workers))
