"""A fine-tuning run's state and its one file, ``<run_dir>/last.pth``.

The state is saved atomically after every epoch (and where ``max_steps`` or a stop signal ends the
run): weights, optimiser, epoch, step, evaluations, RNG and the run's identity. It is never saved
with a NaN or infinite weight, and it is resumed exactly, by the same run only (``resume auto``).
"""

from __future__ import annotations

import math
from pathlib import Path

from torch import nn
from torch.optim import Optimizer

from lowssl import distributed
from lowssl.io import atomic_torch_save, first_non_finite, load_checkpoint
from lowssl.rng import rng_state, set_rng_state
from lowssl.stopping import NonFiniteLossError, NonFiniteWeightsError, refuse_non_finite, refuse_other_run

FORMAT = "lowssl-semisup-v1"


class RunState:
    """Where a fine-tuning stands: the model and optimiser it trains, the epoch and batch it starts at,
    its global step and evaluations, and which of its steps ``last.pth`` holds. ``identity``: what
    makes a run this run (protocol, subset, checkpoint, ...); another run's file is never resumed."""

    def __init__(self, model: nn.Module, optimizer: Optimizer, identity: dict, run_dir: Path) -> None:
        self.model = model
        self.optimizer = optimizer
        self.identity = identity
        self.last = run_dir / "last.pth"
        self.start_epoch = 0
        self.start_batch = 0
        self.global_step = 0
        self.history: list[dict] = []  # one entry per evaluation: epoch, complete, top1, top5
        # the global step whose weights last.pth holds, where this run saved or resumed it
        self.saved_step: int | None = None

    def resume(self, path: Path) -> None:
        """Continue from the file ``path``: weights, optimiser, RNG, epoch, step and evaluations. A file
        with a NaN or infinite weight, or another run's, is refused (ResumeError)."""
        state = load_checkpoint(path)
        refuse_non_finite(path, state.get("model"), "model", "use --resume never to start over")
        differences = [
            f"{k}: {state['identity'].get(k)!r} -> {v!r}"
            for k, v in self.identity.items()
            if state["identity"].get(k) != v
        ]
        refuse_other_run(
            path,
            differences,
            "it is another run",
            "use another --output-dir, or --resume never to start over",
        )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        self.start_epoch, self.start_batch, self.global_step, self.history = (
            state["epoch"],
            state["step_in_epoch"],
            state["global_step"],
            state["history"],
        )
        self.saved_step = self.global_step if path == self.last else None

    def check_loss(self, loss: float, epoch: int, step: int) -> None:
        """Stop on a NaN or infinite loss, saying what the run can resume from."""
        if not math.isfinite(loss):
            raise NonFiniteLossError(
                f"loss is {loss} at epoch {epoch + 1}, step {step}; the run stopped; " + self.last_good()
            )

    def check_weights(self) -> None:
        """Stop, as a NaN loss does, when the last update left a weight NaN or infinite (the loss that
        would show it is only computed at the next step): nothing is evaluated or saved from it."""
        broken = first_non_finite(
            {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}
        )
        if broken is not None:
            raise NonFiniteWeightsError(
                f"{broken} is NaN or infinite after optimiser step {self.global_step} (lower base_lr). The "
                f"run stopped without saving this state to {self.last.name}; " + self.last_good()
            )

    def save(self, epoch: int, step_in_epoch: int, is_main: bool) -> None:
        """Write ``last.pth`` (the main process) once the weights are checked finite; every process
        waits for it. ``epoch``, ``step_in_epoch``: where a resumed run starts."""
        self.check_weights()
        if is_main:
            atomic_torch_save(
                {
                    "format": FORMAT,
                    "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                    "optimizer": self.optimizer.state_dict(),
                    "epoch": epoch,
                    "step_in_epoch": step_in_epoch,
                    "global_step": self.global_step,
                    "history": self.history,
                    "rng": rng_state(),
                    "identity": self.identity,
                },
                self.last,
            )
        self.saved_step = self.global_step
        distributed.barrier()

    def last_good(self) -> str:
        """What a run stopped by a NaN or infinity can resume from: every checkpoint it wrote was
        checked finite, but one saved just before this step holds the very weights the NaN loss was
        computed from (an exact resume meets it again)."""
        if not self.last.exists():
            return "no checkpoint was written yet"
        if self.saved_step == self.global_step:
            return (
                f"its last checkpoint, {self.last}, holds the weights this loss was computed from, so "
                "resuming it meets the same loss: start over (--resume never) with a lower base_lr"
            )
        return f"the last good checkpoint is {self.last}"
