"""Stopping a command cleanly: Ctrl-C (SIGINT) or SIGTERM ask a run to stop after the batch in
flight is written (every line already written stays, and `--resume` continues after it), and a
retune or sweep to stop leaving nothing of theirs; a second signal stops at once."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

from ..errors import RunError

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(RunError):
    """A command stopped on a signal; the message says what it left and what to run next."""

    def __init__(self, signum: int, message: str):
        super().__init__(f"stopped by {signal.Signals(signum).name}: {message}")
        self.signum = signum
        self.exit_code = 128 + signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM

    @classmethod
    def run(cls, signum: int, done: int, total: int, output: str, what: str = "input lines are in", overwrite: bool = False) -> "Interrupted":
        """A run stopped: what it wrote stays, and --resume continues it."""
        step = "run the same command with --resume instead of --overwrite to continue" if overwrite else "run the same command with --resume to continue"
        return cls(signum, f"{done} of {total} {what} {output}; {step}")


class GracefulStop:
    """Context manager: while active, the first SIGINT/SIGTERM sets `signum` (the run checks it
    between batches); a second one has the signal's usual effect (SIGINT: KeyboardInterrupt;
    SIGTERM: the process ends at once; the lock dies with it and --resume drops a torn line). Outside the main thread (where
    Python cannot install handlers) it does nothing and the signals keep their default effect. A
    signal the process was started with ignored stays ignored, as Python itself leaves SIGINT."""

    def __init__(self, stopping: str = "stopping after the batch in flight is written") -> None:
        self.stopping = stopping  # what the log says the command does on the first signal
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:  # the second: the signal's own effect (KeyboardInterrupt for SIGINT)
            previous = self._previous.get(signum)
            self.__exit__()
            if callable(previous):  # Python's SIGINT handler raises KeyboardInterrupt right here
                previous(signum, frame)
            elif previous != signal.SIG_IGN:  # the default action (SIGTERM ends the process), restored by __exit__
                signal.raise_signal(signum)
            return
        self.signum = signum
        log.warning("%s received: %s (send it again to stop at once)", signal.Signals(signum).name, self.stopping)

    def install(self) -> None:
        """(Re)install the handlers: call again after a library that installs its own (ray.init
        does, for SIGTERM) so that the run still stops cleanly."""
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                if sig not in self._previous and signal.getsignal(sig) == signal.SIG_IGN:
                    continue  # started with it ignored (a background job of a non-interactive shell ignores SIGINT): it stays so
                previous = signal.signal(sig, self._handle)
                self._previous.setdefault(sig, previous)

    def __enter__(self) -> "GracefulStop":
        self.install()
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():  # None: a handler not set from Python, which cannot be restored
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)  # type: ignore[arg-type]
        self._previous.clear()
