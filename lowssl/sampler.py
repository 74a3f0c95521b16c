"""The one epoch sampler of the training stages: a seeded permutation per epoch, sharded over processes,
resumable at any batch of an epoch.

Its items are ``(epoch, index)`` pairs for :class:`lowssl.data.SeededSamples`, which seeds each
image's augmentation by them. Every process draws the same permutation (seeded by the run's seed and
the epoch through the stage's ``seed_rule``) and takes every world_size-th index of it, so a run
resumed at batch ``start_batch`` sees exactly the batches an uninterrupted run would have seen.

What happens to the images after the last whole batch is the stage's ``remainder`` policy:

- ``"drop"`` (pre-training): only whole global batches; the permutation's tail is left out of the
  epoch (a different tail every epoch).
- ``"pad"`` (semi-supervised fine-tuning): every image in every epoch. The permutation is padded by
  repeating its start to a multiple of the world size, as DistributedSampler does, so every process
  runs the same number of steps, and the last, partial batch is kept (as the authors' loader does),
  unless it would hold a single image, on which BatchNorm cannot train.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Sampler

Remainder = Literal["drop", "pad"]


def seed_plus_epoch(seed: int, epoch: int) -> int:
    """Pre-training's permutation seed: ``seed + epoch``."""
    return seed + epoch


def seed_sequence(seed: int, epoch: int) -> int:
    """Semi-supervised fine-tuning's permutation seed: numpy's SeedSequence of (seed, epoch)."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


class EpochSampler(Sampler):
    """This process's ``(epoch, index)`` pairs for one epoch of ``size`` images, from batch
    ``start_batch`` on (:meth:`set_epoch`). ``steps_per_epoch`` is 0 where ``size`` is too small for one
    step; the stage says why that is an error."""

    def __init__(
        self,
        size: int,
        batch_per_process: int,
        rank: int,
        world_size: int,
        seed: int,
        seed_rule: Callable[[int, int], int],
        remainder: Remainder,
    ) -> None:
        if remainder not in ("drop", "pad"):
            raise ValueError(f"remainder must be 'drop' or 'pad', got {remainder!r}")
        self.size = size
        self.batch = batch_per_process
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.seed_rule = seed_rule
        self.remainder = remainder
        if remainder == "drop":
            self.steps_per_epoch = size // (batch_per_process * world_size)
            self.per_process = self.steps_per_epoch * batch_per_process
        else:
            per_process = math.ceil(size / world_size)
            self.steps_per_epoch = per_process // batch_per_process + (per_process % batch_per_process > 1)
            self.per_process = min(per_process, self.steps_per_epoch * batch_per_process)
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch = epoch
        self.start_batch = start_batch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed_rule(self.seed, self.epoch))
        order = torch.randperm(self.size, generator=generator)
        if self.remainder == "pad":
            total = self.world_size * math.ceil(self.size / self.world_size)
            order = order.repeat(math.ceil(total / self.size))[:total]
        mine = order[self.rank :: self.world_size][: self.per_process][self.start_batch * self.batch :]
        return iter([(self.epoch, index) for index in mine.tolist()])

    def __len__(self) -> int:
        return self.per_process - self.start_batch * self.batch
