"""What guards a results file: one writer at a time, and the identity of the run that wrote it.

- `OutputLock`: an exclusive advisory lock (flock) on `.<output>.lock` beside the results file,
  held for the whole run. A second run on the same file is refused at once, naming the holder's
  pid. The kernel drops the lock when its process ends, however it ends (kill -9 included).
- `RunIdentity`: everything that changes the results (input file, models, precision, parameters,
  JPEG round trip, per-stage timings in the lines) is written to `.<output>.run.json` when a run
  starts a file; `--resume` compares it with the resuming run's and refuses a mismatch, naming
  what differs. Threads and batch sizes do not change results and may differ. Each result line
  also carries a digest of its input line, so a resume checks the processed prefix line by line.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import RunError
from .manifest import Manifest


class OutputInUse(RunError):
    """Another live process holds the results file."""


def sidecar(output: Path, suffix: str) -> Path:
    return output.with_name(f".{output.name}.{suffix}")


class OutputLock:
    """Exclusive lock on a results file for the lifetime of a run."""

    def __init__(self, output: Path):
        self.output = output
        self.path = sidecar(output, "lock")
        self._fd: int | None = None

    def acquire(self) -> "OutputLock":
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
                os.close(fd)
                if exc.errno in (errno.EAGAIN, errno.EACCES):
                    raise OutputInUse(
                        f"{self.output} is being written by another run (pid {holder}); wait for it to finish, "
                        "or write to another --output"
                    ) from None
                raise
            # the file we locked must still be the one at the path (a finishing run removes it)
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                self._fd = fd
                return self
            os.close(fd)

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.unlink(self.path)  # still holding the lock: a waiting opener re-checks the inode
            except FileNotFoundError:
                pass
            os.close(self._fd)
            self._fd = None


def line_digest(text: str) -> str:
    """Short digest of one input line (its text without the line break)."""
    return hashlib.sha256(text.rstrip("\r\n").encode("utf-8", "surrogatepass")).hexdigest()[:16]


@dataclass(frozen=True)
class RunIdentity:
    input: str  # resolved path of the input file
    models: str  # digest of the model files (manifest "files": names, sizes, sha256)
    precision: str
    params: str  # canonical JSON of the three parameter dicts
    jpeg_roundtrip: bool
    timings: bool
    format: str = "imgdiff-onnx-results/1"

    def differences(self, other: "RunIdentity") -> list[str]:
        mine, theirs = asdict(self), asdict(other)
        return [k for k in mine if mine[k] != theirs[k]]

    def write(self, output: Path) -> None:
        path = sidecar(output, "run.json")
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, path)

    @classmethod
    def read(cls, output: Path) -> "RunIdentity | None":
        path = sidecar(output, "run.json")
        if not path.is_file():
            return None
        try:
            return cls(**json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, TypeError):
            return None


def models_digest(manifest: Manifest) -> str:
    files = manifest.files_json()
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]


def params_text(params_dicts: dict) -> str:
    return json.dumps(params_dicts, sort_keys=True)
