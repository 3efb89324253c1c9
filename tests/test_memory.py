"""Freed model buffers go back to the system: the allocator setting the engine applies."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from imgdiff_onnx import DifferenceAreaGenerator, EngineSettings, OperatorParams, PairInput
from imgdiff_onnx.engine import memory

from .conftest import PAIR1, PAIR2, PAIR_CAPTIONS

OPEN = OperatorParams.from_dicts({"min_score_1": -1, "min_score_2": -1, "max_score_2": 1}, {"imgsz": 320}, {"min_score": 0, "max_score": 1})

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# A 16 MiB buffer freed raises glibc's mmap threshold to 16 MiB, so a 15 MiB buffer then comes
# from the heap and stays resident after free (below the heap's trim threshold). The script
# prints how much of that second buffer is still resident once it is freed.
_SCRIPT = """
import sys
import numpy as np
from imgdiff_onnx.engine import memory

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

if sys.argv[1] == "on":
    assert memory.return_freed_memory()
a = np.ones(16 << 20, dtype=np.uint8); del a
before = rss_mb()
b = np.ones(15 << 20, dtype=np.uint8); del b
print(rss_mb() - before)
"""


def _resident_after_free(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", _SCRIPT, mode], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


@pytest.mark.skipif(not GLIBC, reason="glibc allocator only")
def test_freed_large_buffers_leave_the_process():
    assert _resident_after_free("off") > 10, "the default allocator no longer keeps the buffer: this test checks nothing"
    assert _resident_after_free("on") < 1


@pytest.mark.skipif(not GLIBC, reason="glibc allocator only")
def test_trim_and_threshold_report_success():
    assert memory.trim() is True
    assert memory.return_freed_memory(memory.DEFAULT_MMAP_THRESHOLD) is True
    with pytest.raises(ValueError, match="mmap_threshold"):
        memory.return_freed_memory(-1)


@pytest.mark.parametrize("mode,at_load", [("trim", ["trim"]), ("mmap", ["threshold", "trim"]), ("off", [])])
def test_engine_releases_memory_as_asked(tiny_models, monkeypatch, mode, at_load):
    calls = []
    monkeypatch.setattr(memory, "return_freed_memory", lambda *a: calls.append("threshold") or True)
    monkeypatch.setattr(memory, "trim", lambda: calls.append("trim") or True)
    engine = DifferenceAreaGenerator(tiny_models, OPEN, EngineSettings(threads=1, memory_release=mode, windows_per_step=2))
    assert calls == at_load
    result = engine.process(PairInput(PAIR1, PAIR2, *PAIR_CAPTIONS))
    engine.close()
    steps = sum(-(-result.counts[n] // 2) for n in ("unique_windows", "after_crop_pair_gate", "after_itm_image1"))
    assert result.counts["unique_windows"] > 2, "one step per gate: the test checks little"
    # after FastSAM, and after every step of every gate
    assert calls[len(at_load):] == ([] if mode == "off" else ["trim"] * (1 + steps))


def test_memory_release_setting_is_checked():
    with pytest.raises(ValueError, match="memory_release must be one of trim, mmap, off"):
        EngineSettings(memory_release="always")


# ---- huge pages ------------------------------------------------------------------------------

HUGE_PAGES_POSSIBLE = GLIBC and memory.transparent_huge_pages() == "madvise" and memory.glibc_supports_huge_pages()


def test_transparent_huge_page_mode_is_the_bracketed_word(tmp_path):
    mode = tmp_path / "enabled"
    mode.write_text("always [madvise] never\n")
    assert memory.transparent_huge_pages(mode) == "madvise"
    mode.write_text("[always] madvise never\n")
    assert memory.transparent_huge_pages(mode) == "always"
    assert memory.transparent_huge_pages(tmp_path / "missing") is None


# Touches a 64 MiB malloc'd buffer (glibc maps it on its own) and prints how many MB of the
# process's anonymous memory came in huge pages, and whether the process says it has them.
_HUGE_SCRIPT = """
import ctypes
from imgdiff_onnx.engine import memory

def huge_mb():
    for line in open("/proc/self/smaps_rollup"):
        if line.startswith("AnonHugePages:"):
            return int(line.split()[1]) / 1024

def fallbacks():  # huge pages the kernel could not give (machine-wide)
    for line in open("/proc/vmstat"):
        if line.startswith("thp_fault_fallback "):
            return int(line.split()[1])
    return 0

libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
before, failed = huge_mb(), fallbacks()
buf = libc.malloc(64 << 20)
ctypes.memset(buf, 1, 64 << 20)
print(huge_mb() - before, memory.huge_pages_active(), fallbacks() - failed)
"""


def _huge_pages_in_child(tunables: str | None) -> tuple[float, bool]:
    """(MB of the buffer in huge pages, huge_pages_active()) in a process started with `tunables`."""
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    if tunables is not None:
        env["GLIBC_TUNABLES"] = tunables
    out = subprocess.run([sys.executable, "-c", _HUGE_SCRIPT], capture_output=True, text=True, check=True, env=env)
    mb, active, fallbacks = out.stdout.split()
    if tunables is not None and "hugetlb=1" in tunables and float(mb) == 0 and int(fallbacks) > 0:
        pytest.skip("the kernel had no free huge pages to give (thp_fault_fallback rose)")
    return float(mb), active == "True"


@pytest.mark.skipif(not HUGE_PAGES_POSSIBLE, reason="needs Linux THP in madvise mode and glibc >= 2.35")
def test_huge_pages_come_with_the_tunable_and_are_reported():
    assert _huge_pages_in_child(None) == (0.0, False)
    mb, active = _huge_pages_in_child(f"glibc.malloc.arena_max=4:{memory.HUGE_PAGES_SETTING}")
    assert active and mb >= 32, f"only {mb} MB of the 64 MiB buffer in huge pages"
    assert _huge_pages_in_child("glibc.malloc.hugetlb=0") == (0.0, False)
