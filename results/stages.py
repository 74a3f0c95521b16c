"""Running the stages' own commands from the results targets (reproduce, figures, evaluate-checkpoint)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from lowssl.checkpoints import schema
from lowssl.data import usable_cpus
from lowssl.io import CheckpointError


def run(command: list[str]) -> None:
    """Print the command as a user would type it, then run it; a failure raises CalledProcessError."""
    print("+ " + shlex.join(command), flush=True)
    subprocess.run(command, check=True)


def run_parallel(commands: list[tuple[list[str], Path]], jobs: int) -> None:
    """Run ``(command, log file)`` pairs ``jobs`` at a time, in order; ``jobs=1`` is :func:`run`.

    Side by side, each command's output goes to its log file, and each gets ``cores // jobs`` CPU
    threads (``OMP_NUM_THREADS``, unless the caller set it): on a 2-core machine two 1-thread runs
    are about 1.4x the throughput of one 2-thread run of the tiny presets, whose small convolutions
    scale poorly across threads. The first failure stops what has not started and is raised once
    the running commands have finished."""
    if jobs == 1:
        for command, _ in commands:
            run(command)
        return
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, usable_cpus() // jobs)))

    def run_logged(command: list[str], log: Path) -> None:
        log.parent.mkdir(parents=True, exist_ok=True)
        print(f"+ {shlex.join(command)} > {log}", flush=True)
        with log.open("w") as out:
            try:
                subprocess.run(command, check=True, stdout=out, stderr=subprocess.STDOUT, env=env)
            except subprocess.CalledProcessError:
                print(f"error: the command above failed; its output is in {log}", file=sys.stderr, flush=True)
                raise

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(run_logged, command, log) for command, log in commands]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [future for future in futures if future in done and future.exception() is not None]
        if failed:
            for future in futures:
                future.cancel()
            raise failed[0].exception()


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
