"""Running a graph over many samples: batched, or one sample per call when batch mates would
change a sample's result (dynamic int8 quantization scales activations per call)."""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnxruntime as ort


def run_batched(
    session: ort.InferenceSession,
    output: str,
    feeds: dict[str, np.ndarray],
    batch_size: int,
    batch_invariant: bool,
) -> np.ndarray:
    """`session` over the first axis of every feed, in chunks; outputs concatenated in order."""
    n = len(next(iter(feeds.values())))
    step = batch_size if batch_invariant else 1
    chunks = [session.run([output], {k: v[i : i + step] for k, v in feeds.items()})[0] for i in range(0, n, step)]
    if not chunks:
        raise ValueError("run_batched needs at least one sample")
    return np.concatenate(chunks, axis=0)


def map_in_chunks(items: list, batch_size: int, fn: Callable[[list], np.ndarray]) -> np.ndarray:
    """Apply `fn` to consecutive chunks of `items` (bounds peak memory of preprocessing)."""
    return np.concatenate([fn(items[i : i + batch_size]) for i in range(0, len(items), batch_size)], axis=0)
