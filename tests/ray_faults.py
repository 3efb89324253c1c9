"""A Ray run whose actors crash on chosen records, as a segfault or an OOM kill would.

    python -m tests.ray_faults CRASH_KEYS MARKER_DIR <arguments of `python -m imgdiff_onnx run`>

CRASH_KEYS: comma-separated record keys; "key" crashes its actor every time, "key~" only the
first time (a marker file in MARKER_DIR remembers); "@init" makes every actor fail to load its
engine (as models missing on a node would). The run is the CLI's own `run --ray`, with run_ray
given the crashing worker class.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from imgdiff_onnx import __main__ as cli
from imgdiff_onnx.runs import ray_run
from imgdiff_onnx.runs.ray_run import EngineWorker
from imgdiff_onnx.runs.records import InputLine, OutputLine


def crashing_worker(spec: str, marker_dir: Path) -> type[EngineWorker]:
    """An EngineWorker subclass that kills its own process on the records named in `spec`.
    Built in a function, so Ray pickles the class by value (the actors need not import tests)."""
    entries = [(entry.rstrip("~"), entry.endswith("~")) for entry in spec.split(",") if entry]

    class CrashingWorker(EngineWorker):
        def __init__(self, *args, **kwargs):
            if ("@init", False) in entries:
                raise FileNotFoundError("no model folder at this path on this node")
            super().__init__(*args, **kwargs)

        def process(self, lines: list[InputLine], timings: bool) -> list[OutputLine]:
            keys = {line.pair.key for line in lines if line.pair is not None}
            for key, once in entries:
                if key not in keys:
                    continue
                if once:
                    marker = marker_dir / f"crashed-{key}"
                    if marker.exists():
                        continue
                    marker.touch()
                os.kill(os.getpid(), signal.SIGKILL)
            return super().process(lines, timings)

    return CrashingWorker


def main(argv: list[str]) -> int:
    spec, marker_dir, cli_args = argv[0], Path(argv[1]), argv[2:]
    ray_run.EngineWorker = crashing_worker(spec, marker_dir)  # the actors the CLI's run starts are these
    return cli.main(cli_args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
