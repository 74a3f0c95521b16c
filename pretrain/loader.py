"""The pre-training data path: multi-crop views with reproducible randomness and exact resume.

Each sample's augmentation is seeded by (seed, epoch, index), not by the worker that happens to load
it (:class:`lowssl.data.SeededSamples`), so the views of a step do not depend on the number of
workers or processes, and a run resumed in the middle of an epoch sees exactly the views an
uninterrupted run would have seen. The epoch's order is :class:`lowssl.sampler.EpochSampler`'s,
whole global batches only.
"""

from __future__ import annotations

from torch.utils.data import DataLoader, Dataset

from lowssl.data import DatasetError, SeededSamples
from lowssl.pretrain.views import MultiCropViews, collate_views
from lowssl.sampler import EpochSampler, seed_plus_epoch


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
    # Full global batches only, a permutation seeded by seed + epoch (lowssl.sampler)
    sampler = EpochSampler(
        len(images), batch_per_process, rank, world_size, seed, seed_rule=seed_plus_epoch, remainder="drop"
    )
    if sampler.steps_per_epoch == 0:
        raise DatasetError(
            f"the dataset has {len(images)} images, fewer than one global batch of "
            f"{batch_per_process * world_size}; lower batch_size"
        )
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
