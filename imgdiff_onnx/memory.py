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

Huge pages. A fresh buffer costs one page fault per 4 KiB page it touches (FastSAM-x at 1024 px
touches ~300 MB per image); with the kernel's transparent huge pages in "madvise" mode (the usual
default) glibc >= 2.35 asks for 2 MiB pages when the process starts with
GLIBC_TUNABLES=glibc.malloc.hugetlb=1, which removes most of those faults. glibc reads the
tunable only at start-up, so the command line restarts itself once with it
(`restart_with_huge_pages`), the Ray runner starts its workers with it, and an embedding process
(Data-Juicer, a script) gets it from the environment it is started with.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform
import sys
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path

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


def transparent_huge_pages(mode_file: Path = THP_MODE_FILE) -> str | None:
    """The kernel's transparent-huge-page mode ("always", "madvise" or "never"), None where it
    cannot be read (not Linux, no THP support)."""
    try:
        text = mode_file.read_text()
    except OSError:
        return None
    chosen = [word[1:-1] for word in text.split() if word.startswith("[") and word.endswith("]")]
    return chosen[0] if chosen else None


def _glibc_supports_hugetlb() -> bool:
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


def _startup_environment() -> Mapping[str, str]:
    """The environment this process was started with (what glibc read), not os.environ as later
    changed."""
    try:
        raw = Path("/proc/self/environ").read_bytes()
    except OSError:
        return os.environ
    pairs = (item.partition(b"=") for item in raw.split(b"\0") if item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, _, v in pairs}


def huge_pages_active() -> bool:
    """Whether this process's large buffers get transparent huge pages: THP "always", or THP
    "madvise" with glibc >= 2.35 started with glibc.malloc.hugetlb=1 or 2."""
    mode = transparent_huge_pages()
    if mode == "always":
        return True
    return mode == "madvise" and _glibc_supports_hugetlb() and _hugetlb_value(_startup_environment()) in ("1", "2")


def environment_with_huge_pages(environ: Mapping[str, str]) -> dict[str, str]:
    """A copy of `environ` whose GLIBC_TUNABLES asks glibc for huge pages; its other tunables are
    kept, and a glibc.malloc.hugetlb it already sets (the user's choice, e.g. 0) is left alone."""
    env = dict(environ)
    if _hugetlb_value(env) is None:
        env["GLIBC_TUNABLES"] = ":".join(t for t in (env.get("GLIBC_TUNABLES", ""), HUGE_PAGES_SETTING) if t)
    return env


def can_restart_with_huge_pages() -> bool:
    """True where a restart would give this process huge pages it does not have: Linux THP in
    "madvise" mode, glibc >= 2.35, and GLIBC_TUNABLES not already setting glibc.malloc.hugetlb."""
    return transparent_huge_pages() == "madvise" and _glibc_supports_hugetlb() and _hugetlb_value(os.environ) is None


def restart_with_huge_pages(argv: list[str]) -> None:
    """Replace this process by the same command (`argv`, without the interpreter, e.g.
    sys.orig_argv[1:]) started with huge pages, where can_restart_with_huge_pages(); otherwise
    return. Call it before any work: nothing of this process survives."""
    if not can_restart_with_huge_pages():
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *argv], environment_with_huge_pages(os.environ))


def resolve_release(choice: str) -> str:
    """EngineSettings.memory_release as this process runs it: "auto" is "mmap" with huge pages
    (no page-fault cost to speak of) and "trim" without."""
    if choice == "auto":
        return "mmap" if huge_pages_active() else "trim"
    return choice
