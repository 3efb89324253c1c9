"""Running a graph over many samples: batched, or one sample per call when batch mates would
change a sample's result (dynamic int8 quantization scales activations per call)."""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnxruntime as ort

from ..errors import ModelRunError


def run_graph(session: ort.InferenceSession, graph: str, outputs: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """`session.run`, with onnxruntime's own exceptions (which share no base class but
    Exception) turned into ModelRunError naming the graph and the input shapes."""
    try:
        return session.run(outputs, feeds)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises Fail, InvalidArgument, RuntimeException...
        if type(exc).__module__.startswith("onnxruntime"):
            shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in feeds.items())
            raise ModelRunError(graph, f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]} (inputs {shapes})") from exc
        raise


def run_batched(
    session: ort.InferenceSession,
    graph: str,
    output: str,
    feeds: dict[str, np.ndarray],
    batch_size: int,
    batch_invariant: bool,
) -> np.ndarray:
    """`session` over the first axis of every feed, in chunks; outputs concatenated in order."""
    n = len(next(iter(feeds.values())))
    step = batch_size if batch_invariant else 1
    chunks = [run_graph(session, graph, [output], {k: v[i : i + step] for k, v in feeds.items()})[0] for i in range(0, n, step)]
    if not chunks:
        raise ValueError("run_batched needs at least one sample")
    return np.concatenate(chunks, axis=0)


def map_in_chunks(items: list, batch_size: int, fn: Callable[[list], np.ndarray]) -> np.ndarray:
    """Apply `fn` to consecutive chunks of `items` (bounds peak memory of preprocessing)."""
    return np.concatenate([fn(items[i : i + batch_size]) for i in range(0, len(items), batch_size)], axis=0)
