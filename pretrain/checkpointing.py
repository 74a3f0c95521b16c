"""A pre-training run's checkpoints: :func:`resume` one into a :class:`~pretrain.run.Run`,
:func:`save_checkpoint` it (docs/checkpoints.md), and never a NaN or infinity (:func:`stop_if_not_finite`,
naming :func:`last_good_checkpoint` to resume from).
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from lowssl.checkpoints import schema
from lowssl.io import first_non_finite, remove_stale_temp_files
from lowssl.pretrain.run import Run
from lowssl.progress import say
from lowssl.rng import rng_state, set_rng_state
from lowssl.stopping import (
    NonFiniteWeightsError,
    ResumeError,
    refuse_non_finite,
    refuse_other_run,
    resume_path,
)


def resume(run: Run) -> tuple[int, int]:
    """Load the checkpoint ``resume`` names (if any) into ``run``; returns the (epoch, step in epoch)
    to start from."""
    path = resume_path(run.cfg.resume, run.run_dir)
    if run.ctx.is_main:  # a kill mid-save leaves a partial temp file beside the whole checkpoint
        for stale in remove_stale_temp_files(run.run_dir):
            say(f"removed {stale.name}, left by a run killed while saving")
    if path is None:
        return 0, 0
    try:
        state = schema.load(path)
    except ValueError as error:  # schema.load: a checkpoint, but not one of pre-training
        raise ResumeError(f"refusing to resume: {error}; resume=never to start over") from error
    refuse_non_finite(
        path,
        state["method_state"],
        "method_state",
        "resume from an earlier checkpoint (resume=PATH), or resume=never to start over",
    )
    refuse_other_run(
        path,
        schema.model_differences(state["config"], run.provenance["config"]),
        "the config changes the model or method",
        "use a new output_dir, or resume=never to start over",
    )
    run.method.load_state_dict(state["method_state"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scaler.load_state_dict(state["grad_scaler"])
    if run.probe is not None and state.get("online_probe"):
        run.probe.load_state_dict(state["online_probe"])
    set_rng_state(state["rng"])
    run.global_step = state["global_step"]
    run.saved_step = run.global_step if path == run.last_path else None
    run.resumed_from = path
    return state["epoch"], state["step_in_epoch"]


def save_checkpoint(run: Run, path: Path, epoch: int, step_in_epoch: int) -> Path:
    """A checkpoint to resume at (``epoch``, ``step_in_epoch``), with the backbones under torchvision /
    timm names and the run's provenance (docs/checkpoints.md), written atomically to ``path``."""
    method, probe = run.method, run.probe
    teacher = getattr(method, "teacher_backbone", None)
    state = {
        "student_backbone": _cpu_state(method.student_backbone),
        "teacher_backbone": _cpu_state(teacher) if teacher is not None else None,
        "method_state": _cpu_state(method),
        "method_config": run.method_config,
        "optimizer": run.optimizer.state_dict(),
        "grad_scaler": run.scaler.state_dict(),
        "online_probe": probe.state_dict() if probe is not None else None,
        "epoch": epoch,
        "step_in_epoch": step_in_epoch,
        "global_step": run.global_step,
        "rng": rng_state(),
        "metrics": run.metrics,
        "method": run.cfg.method_name,
        "backbone": run.cfg.backbone,
        "recipe": run.cfg.recipe,
        **run.provenance,
    }
    stop_if_not_finite(run, state, path)
    schema.save(path, state)
    if path == run.last_path:
        run.saved_step = run.global_step
    return path


def stop_if_not_finite(run: Run, state: dict, unsaved: Path) -> None:
    """Stop the run, as a NaN loss does, when a floating tensor of ``state`` is NaN or infinite: the
    last step's update overflowed, and ``unsaved`` is not written from it (the loss that would show it
    is only computed at the next step)."""
    broken = first_non_finite(state)
    if broken is not None:
        raise NonFiniteWeightsError(
            f"{broken} is NaN or infinite after the update of global step {run.global_step - 1} "
            f"(lower optim.base_lr, or set optim.clip_grad). The run stopped without saving this state to "
            f"{unsaved.name}; {last_good_checkpoint(run)}"
        )


def last_good_checkpoint(run: Run) -> str:
    """Where a run stopped by a NaN or infinity can resume from: every checkpoint it wrote was checked
    finite (:func:`stop_if_not_finite`), but one saved just before this step holds the very weights the
    NaN loss was computed from (an exact resume meets it again)."""
    if not run.last_path.exists():
        return "no checkpoint was written yet"
    if run.saved_step == run.global_step:
        return (
            f"its last checkpoint, {run.last_path}, holds the weights this loss was computed from, so "
            "resuming it meets the same loss: start over (resume=never) or from an earlier "
            "checkpoint_epochNNNN.pth (resume=PATH), with a lower optim.base_lr"
        )
    return f"the last good checkpoint is {run.last_path}"


def _cpu_state(module: nn.Module) -> dict:
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}
