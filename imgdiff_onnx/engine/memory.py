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
on glibc. Measured effects: benchmarks/ARCHIVE.md ("Memory").

Huge pages: a process started with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (glibc >= 2.35, kernel
transparent huge pages in "madvise" mode, the usual default) gets its large buffers in 2 MiB
pages, which takes most of the page faults out of "mmap" (measured: its extra CPU time about
halved). glibc reads the tunable only at start-up, so the engine cannot turn it on itself;
`huge_pages_active` says whether the process has it (the engine logs it at load).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path

from ..errors import ParameterError

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # mallopt parameter number, glibc <malloc.h>
DEFAULT_MMAP_THRESHOLD = 4 * 1024 * 1024
HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb"  # glibc >= 2.35: 1 = madvise its heaps and mapped chunks for THP
HUGE_PAGES_SETTING = f"{HUGE_PAGES_TUNABLE}=1"
THP_MODE_FILE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


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
        raise ParameterError(f"mmap_threshold must be >= 0, got {mmap_threshold}", "mmap_threshold")
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


def transparent_huge_pages(mode_file: Path = THP_MODE_FILE) -> str | None:
    """The kernel's transparent-huge-page mode ("always", "madvise" or "never"), None where it
    cannot be read (not Linux, no THP support)."""
    try:
        text = mode_file.read_text()
    except OSError:
        return None
    chosen = [word[1:-1] for word in text.split() if word.startswith("[") and word.endswith("]")]
    return chosen[0] if chosen else None


def glibc_supports_huge_pages() -> bool:
    """glibc 2.35 or newer (the first with the glibc.malloc.hugetlb tunable)."""
    name, version = platform.libc_ver()
    if name != "glibc" or _glibc() is None:
        return False
    try:
        major, minor = (int(part) for part in version.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (2, 35)


def _hugetlb_value(environ: Mapping[str, str]) -> str | None:
    """The value GLIBC_TUNABLES gives glibc.malloc.hugetlb, None when it does not set it."""
    for item in environ.get("GLIBC_TUNABLES", "").split(":"):
        name, _, value = item.partition("=")
        if name == HUGE_PAGES_TUNABLE:
            return value
    return None


def huge_pages_active() -> bool:
    """Whether this process's large buffers get transparent huge pages: THP "always", or THP
    "madvise" with glibc >= 2.35 started with glibc.malloc.hugetlb=1 or 2."""
    mode = transparent_huge_pages()
    if mode == "always":
        return True
    # os.environ as Python found it at start-up (/proc/self/environ is no guide: glibc may rewrite
    # that copy while it parses the tunables)
    return mode == "madvise" and glibc_supports_huge_pages() and _hugetlb_value(os.environ) in ("1", "2")
