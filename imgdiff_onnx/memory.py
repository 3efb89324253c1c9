"""Giving freed memory back to the operating system (glibc's allocator only).

With onnxruntime's arena off, every activation buffer is a plain malloc/free. glibc serves a
large request with its own mmap, but raises that threshold (up to 32 MiB) to the size of each
such block freed, so after the first runs the model buffers come from its heaps, which it
shrinks only when their top is free: the process keeps much of each thread's high-water mark,
and loading a graph leaves its transient copies resident.

`trim` hands the heaps' free pages back (malloc_trim); the engine calls it after loading and
between stages. `return_freed_memory` fixes the mmap threshold, so that buffers of that size and
more are unmapped as soon as they are freed: a lower peak, but every such buffer is faulted in
again at its next use, which costs CPU time. Both are process-wide; they do nothing elsewhere than
on glibc. Measured effects: benchmarks/README.md ("Memory").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform
from functools import lru_cache

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # mallopt parameter number, glibc <malloc.h>
DEFAULT_MMAP_THRESHOLD = 4 * 1024 * 1024


@lru_cache(maxsize=1)
def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
        return libc
    except (OSError, AttributeError):
        return None


def return_freed_memory(mmap_threshold: int = DEFAULT_MMAP_THRESHOLD) -> bool:
    """Serve allocations of `mmap_threshold` bytes and more with mmap from now on, so that
    freeing them returns the memory at once. False when not on glibc (nothing changed)."""
    if mmap_threshold < 0:
        raise ValueError(f"mmap_threshold must be >= 0, got {mmap_threshold}")
    libc = _glibc()
    if libc is None:
        return False
    if libc.mallopt(M_MMAP_THRESHOLD, int(mmap_threshold)) != 1:
        log.warning("mallopt(M_MMAP_THRESHOLD, %d) failed; freed model buffers may stay resident", mmap_threshold)
        return False
    return True


def trim() -> bool:
    """Return free heap pages to the system (malloc_trim). False when not on glibc."""
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
