"""What every stage prints while it works: progress bars and info lines, the same way in every stage.

- On a terminal (stderr is a TTY), a tqdm bar, as solo-learn and timm show one.
- Redirected to a file (a SLURM log, ``> run.log 2>&1``), no carriage-return updates: a plain line at
  most every :data:`LINE_EVERY_S` seconds while a loop runs (``LOWSSL_PROGRESS_SECONDS`` changes it)
  and, for a loop that keeps its bar (``leave=True``), one line when it ends.
- With ``--quiet`` (:func:`set_quiet`, which every stage's CLI calls), neither bars nor info lines:
  only the stage's closing line (printed with ``print``) and errors.

Info lines (:func:`say`) go to stderr, through ``tqdm.write`` so that a live bar is redrawn below them.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

from tqdm import tqdm

#: Seconds between two plain progress lines when stderr is not a terminal.
LINE_EVERY_S = float(os.environ.get("LOWSSL_PROGRESS_SECONDS", 60))

_quiet = False


def set_quiet(quiet: bool) -> None:
    """Silence progress and info lines in this process (``--quiet``); errors and results still print."""
    global _quiet
    _quiet = quiet


def add_quiet_argument(parser) -> None:
    """The ``--quiet`` flag, worded the same in every stage."""
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bars or info lines: only the closing line and errors",
    )


def say(message: str, enabled: bool = True) -> None:
    """An info line on stderr (the banner, an epoch's values); nothing under ``--quiet`` or where
    ``enabled`` is false (the processes other than the main one)."""
    if enabled and not _quiet:
        tqdm.write(message, file=sys.stderr)


def progress(
    iterable: Iterable, desc: str, total: int | None = None, enabled: bool = True, leave: bool = False
):
    """``iterable`` wrapped for showing progress: a tqdm bar on a terminal, plain lines in a log,
    nothing under ``--quiet`` or where ``enabled`` is false (the processes other than the main one).
    What comes back iterates as ``iterable`` and has tqdm's ``set_postfix`` and ``close``."""
    if _quiet or not enabled:
        return _Silent(iterable)
    if sys.stderr.isatty():
        return tqdm(iterable, desc=desc, total=total, leave=leave, dynamic_ncols=True)
    return _Lines(iterable, desc, total, leave)


class _Silent:
    def __init__(self, iterable: Iterable) -> None:
        self.iterable = iterable

    def __iter__(self) -> Iterator:
        return iter(self.iterable)

    def set_postfix(self, *args: Any, **values: Any) -> None:
        pass

    def close(self) -> None:
        pass


class _Lines(_Silent):
    """Progress as whole lines on stderr: ``desc: done/total (percent), elapsed, postfix``."""

    def __init__(self, iterable: Iterable, desc: str, total: int | None, leave: bool) -> None:
        super().__init__(iterable)
        self.desc, self.leave = desc, leave
        self.total = total if total is not None else _length(iterable)
        self.done, self.postfix = 0, ""
        self.start = self.last_line = time.monotonic()
        self.closed = False

    def __iter__(self) -> Iterator:
        for item in self.iterable:
            yield item
            self.done += 1
            if time.monotonic() - self.last_line >= LINE_EVERY_S:
                self._line()
        self.close()

    def set_postfix(self, *args: Any, **values: Any) -> None:
        self.postfix = ", ".join(f"{key} {value}" for key, value in values.items())

    def close(self) -> None:
        if not self.closed and self.leave:
            self._line()
        self.closed = True

    def _line(self) -> None:
        self.last_line = time.monotonic()
        position = (
            f"{self.done}/{self.total} ({100 * self.done / self.total:.0f}%)"
            if self.total
            else str(self.done)
        )
        elapsed = f"{self.last_line - self.start:.0f} s"
        print(
            f"{self.desc}: {position}, {elapsed}" + (f", {self.postfix}" if self.postfix else ""),
            file=sys.stderr,
            flush=True,
        )


def _length(iterable: Iterable) -> int | None:
    try:
        return len(iterable)  # type: ignore[arg-type]
    except TypeError:
        return None
