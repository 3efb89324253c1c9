"""Running a graph over many samples: batched, or one sample per call when batch mates would
change a sample's result (dynamic int8 quantization scales activations per call)."""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import numpy as np
import onnxruntime as ort

from ...errors import ModelRunError
from ..parallel import Workers

T = TypeVar("T")


@contextlib.contextmanager
def _onnxruntime_errors(graph: str, feeds: dict[str, np.ndarray]) -> Iterator[None]:
    """onnxruntime's own exceptions (which share no base class but Exception) turned into
    ModelRunError naming the graph and the input shapes; anything else (a bug of ours) passes."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises Fail, InvalidArgument, RuntimeException...
        if type(exc).__module__.startswith("onnxruntime"):
            shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in feeds.items())
            raise ModelRunError(graph, f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]} (inputs {shapes})") from exc
        raise


def run_graph(
    session: ort.InferenceSession, graph: str, outputs: list[str], feeds: dict[str, np.ndarray], run_options: ort.RunOptions | None = None
) -> list[np.ndarray]:
    """`session.run` (with `run_options` when given), onnxruntime's errors as ModelRunError."""
    with _onnxruntime_errors(graph, feeds):
        got = session.run(outputs, feeds, run_options)
    return got


class OwnOutputs:
    """Runs of one graph whose outputs onnxruntime writes into arrays allocated here (its
    IOBinding), not into buffers of the session's allocator.

    For a session on an arena that is handed back at the end of every run (shrinking arena),
    outputs allocated by onnxruntime are still alive when the run ends, so the arena region
    holding them cannot be freed and stays resident (~70 MB after a 1024-px FastSAM run,
    measured). Output shapes depend on the input shapes: the first run of each input shape is an
    ordinary run, which gives them; later runs of that shape write into fresh arrays.
    """

    def __init__(self, graph: str, outputs: list[str]):
        self._graph, self._outputs = graph, list(outputs)
        self._shapes: dict[tuple, list[tuple[tuple[int, ...], np.dtype]]] = {}

    def run(self, session: ort.InferenceSession, feeds: dict[str, np.ndarray], run_options: ort.RunOptions | None) -> list[np.ndarray]:
        key = tuple((name, value.shape, value.dtype.str) for name, value in sorted(feeds.items()))
        known = self._shapes.get(key)
        if known is None:
            got = run_graph(session, self._graph, self._outputs, feeds, run_options)
            self._shapes[key] = [(out.shape, out.dtype) for out in got]
            return got
        arrays = [np.empty(shape, dtype) for shape, dtype in known]
        inputs = {name: np.ascontiguousarray(value) for name, value in feeds.items()}  # alive until the run ends
        with _onnxruntime_errors(self._graph, feeds):
            binding = session.io_binding()
            for name, value in inputs.items():
                binding.bind_cpu_input(name, value)
            for name, array in zip(self._outputs, arrays):
                binding.bind_output(name, "cpu", 0, array.dtype.type, list(array.shape), array.ctypes.data)
            session.run_with_iobinding(binding, run_options)
        return arrays


def chunk_size(count: int, batch_size: int, batch_invariant: bool, workers: int) -> int:
    """Samples per call: 1 for a graph whose result depends on its batch mates, else up to
    `batch_size`, small enough that every worker gets a chunk."""
    if not batch_invariant:
        return 1
    return max(1, min(batch_size, math.ceil(count / max(1, workers))))


def map_chunks(
    items: Sequence[T], fn: Callable[[Sequence[T]], np.ndarray], batch_size: int, batch_invariant: bool, workers: Workers | None = None
) -> np.ndarray:
    """`fn` over consecutive chunks of `items` (sized by chunk_size; on the workers, if given);
    outputs stacked in input order. Chunking also bounds the memory of preprocessing.

    Each chunk's output is copied into the result as soon as it is ready and then dropped, so
    the chunks' outputs and the result are never all held at once (for BLIP image embeddings,
    1.8 MB per crop, concatenating a list of them needed twice the result's size)."""
    if len(items) == 0:
        raise ValueError("map_chunks needs at least one item")  # internal: callers skip empty steps
    step = chunk_size(len(items), batch_size, batch_invariant, workers.count if workers is not None else 1)
    starts = list(range(0, len(items), step))
    result: np.ndarray | None = None
    lock = threading.Lock()

    def run(start: int) -> None:
        nonlocal result
        out = fn(items[start : start + step])
        rows = min(step, len(items) - start)
        with lock:
            if result is None:
                result = np.empty((len(items), *out.shape[1:]), dtype=out.dtype)
            if out.shape[0] != rows or out.shape[1:] != result.shape[1:] or out.dtype != result.dtype:
                raise ValueError(f"a chunk of {rows} gave output {out.dtype}{tuple(out.shape)}, others {result.dtype}(n, {', '.join(map(str, result.shape[1:]))})")  # internal: a graph broke its contract
        result[start : start + rows] = out

    if workers is not None:
        workers.map(run, starts)
    else:
        for start in starts:
            run(start)
    assert result is not None
    return result
