"""What CPU a benchmark ran on (int8 speed-ups depend on it: VNNI or not, so every result says), and
how much memory a process holds."""

from __future__ import annotations

import json
from pathlib import Path

INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def cpu_description(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict:
    """Model name, x86 family/model and the int8-relevant instruction sets of this machine's CPU
    (empty fields where /proc/cpuinfo does not say, e.g. off Linux)."""
    fields: dict[str, str] = {}
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "cpu family", "model", "flags") and key not in fields:
                fields[key] = value.strip()
    flags = set(fields.get("flags", "").split())
    return {
        "model_name": fields.get("model name", ""),
        "family_model": f"{fields.get('cpu family', '?')}/{fields.get('model', '?')}",
        "avx2": "avx2" in flags,
        "avx512f": "avx512f" in flags,
        "int8_dot_product": [f for f in INT8_FLAGS if f in flags],
    }


def cpu_line(cpu: dict) -> str:
    """One line for a results table."""
    isa = "AVX-512" if cpu["avx512f"] else "AVX2" if cpu["avx2"] else "no AVX2"
    vnni = ", ".join(cpu["int8_dot_product"]) or "no VNNI"
    return f"CPU: {cpu['model_name'] or 'unknown'} (family/model {cpu['family_model']}), {isa}, {vnni}"


def process_memory_mb(field: str = "VmHWM", pid: int | str = "self") -> float:
    """A memory field of /proc/PID/status in MB: VmHWM (peak resident set; not ru_maxrss, which
    Linux keeps across fork+exec, so a worker would report its parent's peak) or VmRSS (now).
    NaN when the field is absent; FileNotFoundError when the process is gone or off Linux."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def save_record(out: Path, name: str, data: dict, header: list[str], rows: list[list[str]], note: str = "") -> str:
    """A benchmark's record: OUT/NAME.json (the data and this CPU) and OUT/table.md (a markdown
    table of `rows` under `header`, then the CPU line and `note`); returns the table, also printed."""
    cpu = cpu_description()
    (out / f"{name}.json").write_text(json.dumps({**data, "cpu": cpu}, indent=1) + "\n")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(row) + " |" for row in rows]
    table = "\n".join(lines) + f"\n\n{cpu_line(cpu)}{'; ' + note if note else ''}\n"
    (out / "table.md").write_text(table)
    print(table)
    return table
