"""One parser base and one way to end for every stage's command line (``python -m lowssl.<stage>``).

Detectron2's train_net tool (``facebookresearch/detectron2@v0.6:tools/train_net.py``) is a short entry point over one shared parser; lowssl's stages are
the same: each ``__main__.py`` builds a :class:`StageParser`, adds its own arguments, and hands the
work to :func:`run_stage`, which turns lowssl's two failure kinds (:mod:`lowssl.errors`) into one line
on stderr and one exit code: 2 for bad input (as argparse's usage errors), 1 for a run that failed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from lowssl.errors import BadInput, RunFailed
from lowssl.progress import add_quiet_argument

__all__ = ["StageParser", "add_quiet_argument", "error_line", "run_stage"]

#: Exit codes: the same in every stage.
EXIT_BAD_INPUT = 2
EXIT_RUN_FAILED = 1


class StageParser(argparse.ArgumentParser):
    """argparse with lowssl's error line: ``error: <message> (see <prog> --help)``, exit 2."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"error: {message} (see {self.prog} --help)\n")


def error_line(error: BaseException) -> str:
    """The one line a stage prints for ``error``: its message with line breaks folded into spaces."""
    return "error: " + " ".join(str(error).split())


def run_stage(body: Callable[[], int | None], cleanup: Callable[[], None] | None = None) -> int:
    """Run a stage's work and return its exit code: 0, or 2 (:class:`BadInput`) / 1 (:class:`RunFailed`)
    with :func:`error_line` on stderr. Any other exception is a bug and keeps its traceback.
    ``cleanup`` runs in every case (e.g. leaving the process group)."""
    try:
        return body() or 0
    except BadInput as error:
        print(error_line(error), file=sys.stderr)
        return EXIT_BAD_INPUT
    except RunFailed as error:
        print(error_line(error), file=sys.stderr)
        return EXIT_RUN_FAILED
    finally:
        if cleanup is not None:
            cleanup()
