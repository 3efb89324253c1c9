"""Progress bars on long work (a dataset run, validate, the report), shown only on a terminal.

While a bar is open, log records go through tqdm.write (tqdm's logging redirect), so a warning
about one record prints above the bar instead of breaking it.
"""

from __future__ import annotations

import sys
from contextlib import ExitStack
from typing import Any


class ProgressBar:
    """A tqdm bar plus the logging redirect; does nothing when disabled or not on a terminal."""

    def __init__(self, total: int, enabled: bool = True, initial: int = 0, unit: str = "pair", desc: str | None = None):
        self._bar: Any = None
        self._stack = ExitStack()
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._bar = tqdm(total=total, initial=initial, unit=unit, desc=desc, dynamic_ncols=True)
            self._stack.enter_context(logging_redirect_tqdm())

    def update(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def describe(self, text: str) -> None:
        if self._bar is not None:
            self._bar.set_description(text)

    def grow(self, n: int) -> None:
        """The work turned out larger by n."""
        if self._bar is not None:
            self._bar.total += n
            self._bar.refresh()

    def close(self) -> None:
        self._stack.close()
        if self._bar is not None:
            self._bar.close()
            self._bar = None
