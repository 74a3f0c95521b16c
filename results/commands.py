"""The command lines the results targets run: a stage as ``python -m lowssl.<stage> ...``, plainly or
under torchrun. Every results target builds its commands here, so each is spelt once and printed
exactly as a user would type it."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def python_module() -> tuple[str, ...]:
    """This interpreter running a module: the launcher of a stage on one process."""
    return (sys.executable, "-m")


def torchrun(gpus: int, nodes: int = 1, rdzv_endpoint: str | None = None) -> tuple[str, ...]:
    """torchrun for ``gpus`` processes on each of ``nodes`` machines (c10d rendezvous at HOST:PORT);
    the same command runs on every node (or once, under ``srun --ntasks-per-node=1``)."""
    several = (
        (f"--nnodes={nodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={rdzv_endpoint}") if nodes > 1 else ()
    )
    return (*python_module(), "torch.distributed.run", *several, f"--nproc_per_node={gpus}", "-m")


def stage_command(stage: str, *args: str, launcher: Sequence[str] | None = None) -> list[str]:
    """``python -m lowssl.<stage> args...`` (``launcher`` instead of ``python -m``: e.g. :func:`torchrun`)."""
    return [*(python_module() if launcher is None else launcher), f"lowssl.{stage}", *args]
