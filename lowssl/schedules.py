"""Cosine and step learning-rate rules, the one formula every stage's schedule evaluates.

Cosine annealing (SGDR, Loshchilov & Hutter 2017, without restarts) as DINO's ``utils.cosine_scheduler``
writes it (facebookresearch/dino@7c446df5b9f45747937fb0d72314eb9f7b66930a:utils.py):
``final + 0.5 (base - final) (1 + cos(pi t / T))`` at step (or epoch) ``t`` of ``T``. Pre-training
evaluates it per step, with a warm-up before (pretrain/optim.py); the linear probe and the
semi-supervised fine-tuning evaluate it once per epoch (evaluate/linear.py, semisup/train.py).
numpy's cosine throughout, so a value is the same whichever stage computes it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lowssl.config import require


def cosine_decay(base: float, final: float, step, total: int):
    """``final + 0.5 (base - final) (1 + cos(pi step / total))``: ``base`` at step 0, ``final`` at
    ``total``; ``step`` an int (returns a float) or an array of steps (returns an array)."""
    values = final + 0.5 * (base - final) * (1 + np.cos(np.pi * np.asarray(step) / total))
    return float(values) if values.ndim == 0 else values


def check_epoch_schedule(schedule: str, milestones: Sequence[int]) -> None:
    """A protocol's per-epoch schedule is usable: ``step`` has milestones, in increasing order
    (ConfigError naming the key otherwise)."""
    require(schedule != "step" or len(milestones) > 0, "milestones", "schedule step needs milestones")
    require(list(milestones) == sorted(milestones), "milestones", "must be increasing")


def epoch_lr(
    schedule: str,
    peak: float,
    epoch: int,
    epochs: int,
    final: float = 0.0,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
) -> float:
    """The LR of 0-based ``epoch`` of ``epochs``: ``cosine`` from ``peak`` to ``final``, or ``step``
    (``peak`` multiplied by ``gamma`` after each milestone epoch, as torch's MultiStepLR)."""
    if schedule == "cosine":
        return cosine_decay(peak, final, epoch, epochs)
    if schedule == "step":
        return peak * gamma ** sum(epoch >= milestone for milestone in milestones)
    raise ValueError(f"unknown schedule '{schedule}'; allowed values: cosine, step")
