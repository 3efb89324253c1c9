"""Whether onnxruntime runs its int8 matrix products on this CPU's AMX tiles.

onnxruntime's kernel library (MLAS) picks its int8 GEMM when it loads: the AMX one where the CPU
has AMX-TILE and AMX-INT8 and Linux grants the process the tile state, which MLAS requests itself
(arch_prctl ARCH_REQ_XCOMP_PERM). The grant is per process and can be read back, so after
`import onnxruntime` it says whether MLAS took its AMX path. Linux x86-64 only; elsewhere False.
"""

from __future__ import annotations

import ctypes
import platform
import sys
from pathlib import Path

import onnxruntime  # noqa: F401  (MLAS asks for the tile state when onnxruntime loads)

_SYS_ARCH_PRCTL = 158  # x86-64
_ARCH_GET_XCOMP_PERM = 0x1022
_XFEATURE_XTILEDATA = 18
AMX_FLAGS = ("amx_tile", "amx_int8")


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The feature flags of the first CPU in /proc/cpuinfo (or of the given text); empty elsewhere."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return frozenset()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def tile_state_granted() -> bool:
    """Whether Linux lets this process use the AMX tile data (ARCH_GET_XCOMP_PERM)."""
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        permitted = ctypes.c_ulong(0)
        # syscall(2) is variadic and reads longs: pass longs, not ctypes' default C ints
        if libc.syscall(ctypes.c_long(_SYS_ARCH_PRCTL), ctypes.c_long(_ARCH_GET_XCOMP_PERM), ctypes.byref(permitted)) != 0:
            return False  # kernels before 5.16 have no AMX support at all
    except (OSError, AttributeError):
        return False
    return bool(permitted.value >> _XFEATURE_XTILEDATA & 1)


def onnxruntime_uses_amx() -> bool:
    """True where onnxruntime's int8 GEMM runs on AMX in this process."""
    return all(flag in cpu_flags() for flag in AMX_FLAGS) and tile_state_granted()
