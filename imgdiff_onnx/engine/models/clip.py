"""CLIP image tower on onnxruntime: uint8 RGB images in, projected image features out."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnxruntime as ort

from ..parallel import Workers
from ..preprocess import ImageNormalization, normalize_batch
from .batching import map_chunks, run_graph


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two (N, D) feature arrays, as float64."""
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


class ClipImageEncoder:
    """The `clip_vision` graph. Images are normalised and run in chunks (one image per call when
    the graph is not batch-invariant), chunks spread over `workers` when given."""

    def __init__(self, session: ort.InferenceSession, norm: ImageNormalization, batch_invariant: bool, batch_size: int = 32, workers: Workers | None = None):
        self._session = session
        self._norm = norm
        self._batch_invariant = batch_invariant
        self.batch_size = batch_size
        self._workers = workers

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """(N, D) features for N uint8 RGB images."""

        def run(chunk: list[np.ndarray]) -> np.ndarray:
            pixels = normalize_batch(chunk, self._norm)
            return run_graph(self._session, "clip_vision", ["image_embeds"], {"pixel_values": pixels})[0]

        return map_chunks(images, run, self.batch_size, self._batch_invariant, self._workers)
