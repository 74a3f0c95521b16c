"""The fine-tuning data path: crops with reproducible randomness, sharded over processes, exact resume.

Each labelled image's crop is seeded by (seed, epoch, index), not by the worker that loads it
(:class:`lowssl.data.SeededSamples`), and the epoch's order is a permutation seeded by (seed, epoch) shared by all processes, so a run resumed from
its last checkpoint (even in the middle of an epoch) sees exactly the batches an uninterrupted run
would have seen, whatever the number of workers.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import Sampler

from lowssl.transforms import centre_crop_transform, random_crop_transform
from semisup.protocols import SemisupProtocol
from semisup.subsets import SubsetError


def train_transform(protocol: SemisupProtocol):
    """RandomResizedCrop + horizontal flip, the only training augmentation (paper App. A)."""
    return random_crop_transform(
        protocol.image_size, protocol.train_crop_scale, protocol.interpolation, protocol.mean, protocol.std
    )


def eval_transform(protocol: SemisupProtocol):
    """Resize(size * 256/224) + CenterCrop(size): Resize 256 + CenterCrop 224 at 224 px (paper App. A)."""
    return centre_crop_transform(protocol.image_size, protocol.interpolation, protocol.mean, protocol.std)


class EpochOrder(Sampler):
    """This process's ``(epoch, index)`` pairs for one epoch, from batch ``start_batch`` on.

    The permutation is padded (repeating its start) to a multiple of the world size, as
    DistributedSampler does, so every process runs the same number of steps; rank r takes every
    world_size-th image. The last, partial batch is kept (as the authors' loader does), unless it would
    hold a single image, on which BatchNorm cannot train.
    """

    def __init__(self, size: int, batch_per_process: int, rank: int, world_size: int, seed: int) -> None:
        self.size = size
        self.batch = batch_per_process
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        per_process = math.ceil(size / world_size)
        self.steps_per_epoch = per_process // self.batch + (per_process % self.batch > 1)
        if self.steps_per_epoch == 0:
            raise SubsetError(
                f"{size} labelled images over {world_size} processes leave one per process: too few to train"
            )
        self.per_process = min(per_process, self.steps_per_epoch * self.batch)
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch = epoch
        self.start_batch = start_batch

    def __iter__(self):
        seed = int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0])
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(seed))
        total = self.world_size * math.ceil(self.size / self.world_size)
        padded = order.repeat(math.ceil(total / self.size))[:total]
        mine = padded[self.rank :: self.world_size][: self.per_process][self.start_batch * self.batch :]
        return iter([(self.epoch, index) for index in mine.tolist()])

    def __len__(self) -> int:
        return self.per_process - self.start_batch * self.batch
