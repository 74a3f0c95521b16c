"""Stopping a training run on a scheduler's signal: at a step boundary, with a checkpoint to resume from.

A cluster warns a job before it ends it: SLURM sends SIGTERM (``scancel``, pre-emption, the time
limit; SIGKILL follows after its grace time), or the signal ``sbatch --signal=SIG@seconds`` names,
often SIGUSR1; ``python -m lowssl.submit`` goes through submitit, which asks for SIGUSR2 90 s before
the end (submitit's ``--signal=USR2@90``) and requeues the job from its handler. torchrun passes a
SIGTERM on to its workers and gives them 30 s (``--shutdown_timeout``) before SIGKILL.

:class:`StopSignals` turns any of the three into a request that a training loop reads at each step
boundary (:meth:`StopSignals.requested`; under DDP every rank gets the same answer at the same step,
agreed by an all-reduce). The loop saves where it stands and calls :meth:`StopSignals.stop`, which
prints one line, hands the signal on to the handler installed before it (submitit's: requeue the job)
and exits with 128 + the signal's number (143 for SIGTERM): what a shell reports for a process the
signal ended, so a wrapper that tests for 143 keeps working, and never 0, which would read as a
finished run. A signal that arrives before the first step stops the run after that step.

A run also stops on a NaN or infinite loss or weight (:class:`NonFiniteLossError`,
:class:`NonFiniteWeightsError`), and refuses to resume another run's checkpoint (:class:`ResumeError`):
the errors every training stage raises, defined once here.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import NoReturn

import torch
import torch.distributed as dist

from lowssl import distributed
from lowssl.errors import BadInput, RunFailed
from lowssl.io import first_non_finite

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


class NonFiniteLossError(RunFailed, RuntimeError):
    """The loss became NaN or infinite: the training run (pretrain, semisup) stops and its last good
    checkpoint is kept."""


class NonFiniteWeightsError(NonFiniteLossError):
    """An update left a weight NaN or infinite; the run stops before it is saved, as on a NaN loss."""


class ResumeError(BadInput, RuntimeError):
    """The checkpoint to resume is not there, or belongs to another run: resuming would change the
    model, the method, the protocol or the labelled subset."""


def resume_path(resume: str, run_dir: Path) -> Path | None:
    """The checkpoint a training run resumes from: ``resume`` is ``auto`` (the run folder's
    ``last.pth`` where there is one), ``never`` (start afresh) or a file that must exist."""
    if resume == "never":
        return None
    if resume == "auto":
        path = run_dir / "last.pth"
        return path if path.exists() else None
    if not Path(resume).is_file():
        raise ResumeError(f"resume checkpoint {resume} does not exist")
    return Path(resume)


def refuse_non_finite(path: Path, tensors, where: str, fix: str) -> None:
    """Refuse (ResumeError) to resume ``path`` when one of its ``tensors`` (its ``where`` entry) is NaN
    or infinite: written before checkpoints were checked, it would be NaN at the first step."""
    broken = first_non_finite(tensors)
    if broken is not None:
        raise ResumeError(f"refusing to resume {path}: its tensor {where}.{broken} is NaN or infinite; {fix}")


def refuse_other_run(path: Path, differences: list[str], what: str, fix: str) -> None:
    """Refuse (ResumeError) to resume ``path`` when ``differences`` (lines "key: old -> new") say it is
    ``what`` (another run, another model): resuming it would change what the run computes."""
    if differences:
        raise ResumeError(f"refusing to resume {path}: {what}:\n  " + "\n  ".join(differences) + f"\n{fix}")


class StopSignals:
    """While entered, SIGTERM / SIGUSR1 / SIGUSR2 ask the loop to stop instead of ending the process;
    leaving restores the handlers there were. ``device``: where the all-reduce's flag lives (NCCL
    reduces CUDA tensors only)."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.received = 0  # the signal's number; 0: none
        self.previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        self.previous = {number: signal.signal(number, self._receive) for number in STOP_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)

    def _receive(self, number: int, frame) -> None:
        self.received = self.received or number  # the first one names the stop

    def requested(self) -> bool:
        """Whether to stop at this step boundary. A collective under DDP: every rank calls it at the
        same steps, and all stop if any rank was signalled (torchrun may signal one worker first)."""
        if not distributed.is_initialized():
            return self.received != 0
        flag = torch.tensor(self.received, device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        agreed = int(flag.item())
        # Every rank answers what they agreed on. A signal caught while this rank waited in the
        # all-reduce is kept (not overwritten by the agreed 0) and stops every rank at the next step.
        self.received = self.received or agreed
        return agreed != 0

    def stop(self, what: str, saved: Path | None) -> NoReturn:
        """End the process after :meth:`requested` said so and the main process saved ``saved``
        (None: the stage keeps no checkpoint). Every rank calls it; the barrier lets rank 0 finish
        writing before any rank exits (torchrun ends the other workers when one exits)."""
        distributed.barrier()
        if distributed.world_size() == 1 or dist.get_rank() == 0:
            name = signal.Signals(self.received).name
            after = (
                f"saved {saved}: resume with the same command"
                if saved is not None
                else "it keeps no checkpoint and recorded nothing: run the same command to start it over"
            )
            print(f"{name} received: stopped {what}; {after}", file=sys.stderr, flush=True)
        previous = self.previous.get(self.received)
        if callable(previous):  # submitit's handler requeues the job (from rank 0) and exits itself
            previous(self.received, None)
        raise SystemExit(128 + self.received)
