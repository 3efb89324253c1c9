"""BLIP image-text matching on onnxruntime: encode crops once, score them against many words."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from ..preprocess import ImageNormalization, normalize_batch
from .batching import map_in_chunks, run_batched


def match_probability(logits: np.ndarray) -> np.ndarray:
    """softmax(itm_logits)[:, 1], the ITM 'match' probability."""
    z = logits.astype(np.float32) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e[:, 1] / e.sum(axis=1)).astype(np.float32)


class BlipMatcher:
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
    ):
        self._vision = vision
        self._itm = itm
        self._norm = norm
        self._vision_invariant = vision_batch_invariant
        self._itm_invariant = itm_batch_invariant
        self.batch_size = batch_size
        self._tokenizer = Tokenizer.from_file(str(tokenizer_path))
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length)

    def encode_images(self, images: list[np.ndarray]) -> np.ndarray:
        """(N, tokens, hidden) image embeddings for N uint8 RGB images."""
        def run(chunk: list[np.ndarray]) -> np.ndarray:
            pixels = normalize_batch(chunk, self._norm)
            return run_batched(self._vision, "blip_vision", "image_embeds", {"pixel_values": pixels}, self.batch_size, self._vision_invariant)

        return map_in_chunks(images, self.batch_size, run)

    def tokens(self, word: str) -> np.ndarray:
        return np.asarray(self._tokenizer.encode(word).ids, dtype=np.int64)

    def score(self, embeds: np.ndarray, word: str) -> np.ndarray:
        """p(match) of every image embedding with one word: (N,) float32.

        All rows share the word's token sequence, so no padding is involved.
        """
        ids = np.repeat(self.tokens(word)[None], len(embeds), axis=0)
        mask = np.ones_like(ids)
        logits = run_batched(
            self._itm,
            "blip_itm",
            "itm_logits",
            {"input_ids": ids, "attention_mask": mask, "image_embeds": embeds},
            self.batch_size,
            self._itm_invariant,
        )
        return match_probability(logits)
