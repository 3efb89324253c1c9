"""Model calls on several cores at once: a thread pool (onnxruntime, OpenCV and numpy release
the GIL) whose map keeps input order and never nests."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from ..errors import ParameterError

T = TypeVar("T")
R = TypeVar("R")


class Workers:
    """`map(fn, items)` on up to `count` threads; results in input order.

    A map called from inside a worker runs inline, so stages can call each other without
    deadlocking the pool. With count 1 everything runs on the calling thread.
    """

    def __init__(self, count: int):
        if count < 1:
            raise ParameterError(f"workers must be >= 1, got {count}", "workers")
        self.count = count
        self._pool: ThreadPoolExecutor | None = None
        self._create = threading.Lock()  # one pool even when two threads map at once
        self._inside = threading.local()

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        if self.count == 1 or len(items) < 2 or getattr(self._inside, "active", False):
            return [fn(item) for item in items]
        with self._create:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.count, thread_name_prefix="imgdiff-worker")

        def run(item: T) -> R:
            self._inside.active = True
            try:
                return fn(item)
            finally:
                self._inside.active = False

        return list(self._pool.map(run, items))  # re-raises the first failure, in input order

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
