"""Freed model buffers go back to the system: the allocator setting the engine applies."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from imgdiff_onnx import DifferenceAreaGenerator, EngineSettings, OperatorParams, PairInput, memory

from .conftest import PAIR1, PAIR2, PAIR_CAPTIONS

OPEN = OperatorParams.from_dicts({"min_score_1": -1, "min_score_2": -1, "max_score_2": 1}, {"imgsz": 320}, {"min_score": 0, "max_score": 1})

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# A 16 MiB buffer freed raises glibc's mmap threshold to 16 MiB, so a 15 MiB buffer then comes
# from the heap and stays resident after free (below the heap's trim threshold). The script
# prints how much of that second buffer is still resident once it is freed.
_SCRIPT = """
import sys
import numpy as np
from imgdiff_onnx import memory

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
