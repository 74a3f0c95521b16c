"""Running the stages' own commands from the results targets (reproduce, figures, evaluate-checkpoint)."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from lowssl.checkpoints import schema
from lowssl.io import CheckpointError


def run(command: list[str]) -> None:
    """Print the command as a user would type it, then run it; a failure raises CalledProcessError."""
    print("+ " + shlex.join(command), flush=True)
    subprocess.run(command, check=True)


def report_failure(error: subprocess.CalledProcessError) -> int:
    """One line naming the failed command; the exit code for ``main``."""
    print(f"error: a stage failed (exit code {error.returncode}): {shlex.join(error.cmd)}", file=sys.stderr)
    return 1


def finished_run(checkpoint: Path) -> dict[str, Any] | None:
    """A run's last checkpoint if the run finished (at its last epoch's end), else None (missing,
    unreadable, not a pre-training checkpoint, or stopped mid-way: run it again and it resumes)."""
    try:
        state = schema.load(checkpoint)
    except (CheckpointError, ValueError):
        return None
    return state if state["epoch"] >= state["config"]["epochs"] and state["step_in_epoch"] == 0 else None
