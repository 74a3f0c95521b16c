"""The pre-training data path: multi-crop views with reproducible randomness and exact resume.

Each sample's augmentation is seeded by (seed, epoch, index), not by the worker that happens to load
it, so the views of a step do not depend on the number of workers or processes, and a run resumed in
the middle of an epoch sees exactly the views an uninterrupted run would have seen.
"""

from __future__ import annotations

import random

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from lowssl.data import DatasetError
from lowssl.rng import sample_seed
from pretrain.views import MultiCropViews, collate_views


class SeededViews(Dataset):
    """Items are ``(epoch, index)`` pairs (from :class:`EpochSampler`); returns (views, label) or
    ``None`` for an unreadable image when ``skip_corrupt`` is set."""

    def __init__(self, images: Dataset, views: MultiCropViews, seed: int, skip_corrupt: bool) -> None:
        self.images = images
        self.views = views
        self.seed = seed
        self.skip_corrupt = skip_corrupt

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item: tuple[int, int]):
        epoch, index = item
        try:
            image = self.images.load_image(index)
        except DatasetError as error:
            if self.skip_corrupt:
                print(f"warning: skipping unreadable image: {error}", flush=True)
                return None
            raise
        label = int(self.images.targets[index])
        if get_worker_info() is not None:  # a loader worker: its RNG and its one thread are its own
            return self._views(epoch, index, image), label
        # In the main process (num_workers=0) keep the training RNG untouched, and run the small
        # per-image ops on one thread: torch's multi-threading makes them many times slower.
        threads, python_rng = torch.get_num_threads(), random.getstate()
        torch.set_num_threads(1)
        try:
            with torch.random.fork_rng(devices=[]):
                return self._views(epoch, index, image), label
        finally:
            torch.set_num_threads(threads)
            random.setstate(python_rng)

    def _views(self, epoch, index, image):
        seed = sample_seed(self.seed, epoch, index)
        torch.manual_seed(seed)
        random.seed(seed)
        return self.views(image)


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
        SeededViews(images, views, seed, skip_corrupt),
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
