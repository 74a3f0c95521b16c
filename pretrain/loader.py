"""The pre-training data path: multi-crop views with reproducible randomness and exact resume.

Each sample's augmentation is seeded by (seed, epoch, index), not by the worker that happens to load
it (:class:`lowssl.data.SeededSamples`), so the views of a step do not depend on the number of
workers or processes, and a run resumed in the middle of an epoch sees exactly the views an
uninterrupted run would have seen.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from lowssl.data import DatasetError, SeededSamples
from pretrain.views import MultiCropViews, collate_views


class EpochSampler(Sampler):
    """A per-epoch permutation (seeded by seed + epoch), sharded over processes, full batches only,
    starting at batch ``start_batch`` of the epoch (to resume inside an epoch)."""

    def __init__(self, size: int, batch_per_process: int, rank: int, world_size: int, seed: int) -> None:
        self.size = size
        self.batch = batch_per_process
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.steps_per_epoch = size // (batch_per_process * world_size)
        if self.steps_per_epoch == 0:
            raise DatasetError(
                f"the dataset has {size} images, fewer than one global batch of "
                f"{batch_per_process * world_size}; lower batch_size"
            )
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch = epoch
        self.start_batch = start_batch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.size, generator=generator)[
            : self.steps_per_epoch * self.batch * self.world_size
        ]
        mine = order[self.rank :: self.world_size][self.start_batch * self.batch :]
        return iter([(self.epoch, int(index)) for index in mine])

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start_batch) * self.batch


def collate_skipping_corrupt(batch):
    """Drop unreadable images (``None``); returns (views, labels, number skipped)."""
    kept = [item for item in batch if item is not None]
    if not kept:
        raise DatasetError("every image of a batch was unreadable")
    views, labels = collate_views(kept)
    return views, labels, len(batch) - len(kept)


def build_loader(
    images: Dataset,
    views: MultiCropViews,
    batch_per_process: int,
    rank: int,
    world_size: int,
    seed: int,
    num_workers: int,
    skip_corrupt: bool,
    pin_memory: bool,
) -> tuple[DataLoader, EpochSampler]:
    sampler = EpochSampler(len(images), batch_per_process, rank, world_size, seed)
    loader = DataLoader(
        SeededSamples(images, views, seed, skip_corrupt),
        batch_size=batch_per_process,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_skipping_corrupt,
        pin_memory=pin_memory,
        drop_last=True,
        persistent_workers=False,  # the sampler's epoch/start change between epochs
        prefetch_factor=4 if num_workers else None,
    )
    return loader, sampler
