"""What guards a results file: one writer at a time, and the identity of the run that wrote it.

- `OutputLock`: an exclusive advisory lock (flock) on the results file itself, held for the
  whole run, so that every name of the file meets it. A second run on the same file is refused
  at once, naming the holder's pid (kept in `.<output>.lock`). The kernel drops the lock when
  its process ends, however it ends (kill -9 included).
- `check_not_input`: an output that is the input file (by any name) is refused before anything
  is opened for writing.
- `RunIdentity`: everything that changes the results (input file, models, precision, parameters,
  JPEG round trip, per-stage timings in the lines, kept scores) is written to `.<output>.run.json` when a run
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

from ..errors import RunError
from ..imageio import same_file
from ..engine.manifest import Manifest


class OutputInUse(RunError):
    """Another live process holds the results file."""


def fsync_folder(folder: Path) -> None:
    """Make a rename or a new file in `folder` durable (its entry, not only the file's data)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sidecar(output: Path, suffix: str) -> Path:
    return output.with_name(f".{output.name}.{suffix}")


def check_not_input(input_path: Path, output: Path) -> None:
    """Refuse an output that is the input file, or whose lock or run record would be (checked
    before anything is opened for writing)."""
    real = Path(os.path.realpath(output))  # where the lock and run record go
    for what, path in (("--output", output), ("its lock file", sidecar(real, "lock")), ("its run record", sidecar(real, "run.json"))):
        if same_file(input_path, path):
            name = f"{output} ({what} {path})" if path != output else str(output)
            raise RunError(f"--output {name} is the input file {input_path}; write the results to another file")


class OutputLock:
    """Exclusive lock on a results file for the lifetime of a run.

    The lock is a flock on the results file itself, so every name of the file (a symlink, a hard
    link, `./x/../out.jsonl`) meets the same lock; the file is created empty if it does not exist
    (and removed again at release if it is still empty). The holder's pid is written to
    `.<output>.lock` beside the file's resolved path, for the message a second run gets.
    """

    def __init__(self, output: Path):
        self.output = output
        self.real = Path(os.path.realpath(output))
        self.path = sidecar(self.real, "lock")
        self._fd: int | None = None
        self._created = False

    def acquire(self) -> "OutputLock":
        while True:
            try:
                fd = os.open(self.real, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
                created = True
            except FileExistsError:
                fd, created = os.open(self.real, os.O_RDWR), False
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EAGAIN, errno.EACCES):
                    raise OutputInUse(f"{self.output} is being written by another run ({self._holder()}); wait for it to finish, "
                                      "or write to another --output") from None  # fmt: skip
                raise
            # the file we locked must still be the one at the path (a finishing run removes an empty one)
            try:
                same = os.fstat(fd).st_ino == os.stat(self.real).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._fd, self._created = fd, created
                self.path.write_text(f"{os.getpid()}\n", encoding="ascii")
                return self
            os.close(fd)

    @staticmethod
    def probe(output: Path) -> None:
        """Refuse now, with the message a run gets at its start, when another run holds the lock
        of the existing file `output` (nothing is created or changed)."""
        try:
            fd = os.open(os.path.realpath(output), os.O_RDONLY)
        except OSError:
            return  # no file yet: nobody holds it
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise OutputInUse(f"{output} is being written by another run ({OutputLock(output)._holder()}); wait for it to finish, "
                                  "or write to another --output") from None  # fmt: skip
        finally:
            os.close(fd)

    def _holder(self) -> str:
        try:
            pid = self.path.read_text(encoding="ascii", errors="replace").strip()
        except OSError:
            pid = ""
        return f"pid {pid}" if pid else "pid unknown: it may name the file by another path"

    def release(self, keep: bool = False) -> None:
        """Unlock; a file this lock created is removed if it is still empty, unless `keep` (a run
        that finished, with nothing to write, leaves its empty results file)."""
        if self._fd is not None:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
            if self._created and not keep and os.fstat(self._fd).st_size == 0:
                try:
                    os.unlink(self.real)  # still holding the lock: a waiting opener re-checks the inode
                except FileNotFoundError:
                    pass
            os.close(self._fd)
            self._fd = None


@dataclass(frozen=True)
class RunIdentity:
    input: str  # resolved path of the input file
    models: str  # digest of the model files (manifest "files": names, sizes, sha256)
    precision: str
    params: str  # canonical JSON of the three parameter dicts
    jpeg_roundtrip: bool
    timings: bool
    format: str = "imgdiff-onnx-results/1"
    keep_scores: bool = False  # the run keeps its scores beside the file (RESULTS.scores/)
    guard_band: str = ""  # the banded models' margins (canonical JSON), "" when no model is banded

    def differences(self, other: "RunIdentity") -> list[str]:
        """The fields that differ; parameters compare by value (1 and 1.0 are the same)."""
        mine, theirs = asdict(self), asdict(other)
        return [k for k in mine if not _same_value(k, mine[k], theirs[k])]

    def explain(self, recorded: "RunIdentity") -> list[str]:
        """Each difference from the `recorded` run, with its values then and now (each parameter
        that differs named on its own)."""
        mine, theirs = asdict(self), asdict(recorded)
        return [item for k in self.differences(recorded) for item in explain_difference(k, theirs[k], mine[k])]

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


def explain_difference(name: str, before: object, now: object) -> list[str]:
    """`name` (before: X, now: Y); for the parameters, each one that differs."""
    if name == "params":
        try:
            old, new = json.loads(str(before)), json.loads(str(now))
            flat = lambda d: {f"{g}.{k}": v for g, values in d.items() for k, v in values.items()}  # noqa: E731
            old, new = flat(old), flat(new)
            keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            if keys:
                return [f"{k} ({_text(old.get(k))} before, {_text(new.get(k))} now)" for k in keys]
        except (ValueError, TypeError, AttributeError):
            pass
    return [f"{name} ({_text(before)} before, {_text(now)} now)"]


def _text(value: object) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 120 else text[:117] + "..."


def _same_value(name: str, a: object, b: object) -> bool:
    if name == "params" and isinstance(a, str) and isinstance(b, str):
        try:
            return json.loads(a) == json.loads(b)
        except ValueError:
            return False
    return a == b


def models_digest(manifest: Manifest) -> str:
    files = manifest.files_json()
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]


def params_text(params_dicts: dict) -> str:
    return json.dumps(params_dicts, sort_keys=True)
