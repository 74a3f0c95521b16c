"""The fine-tuning data path: crops with reproducible randomness, sharded over processes, exact resume.

Each labelled image's crop is seeded by (seed, epoch, index), not by the worker that loads it
(:class:`lowssl.data.SeededSamples`), and the epoch's order is a permutation seeded by (seed, epoch)
shared by all processes (:func:`epoch_order`), so a run resumed from its last checkpoint (even in
the middle of an epoch) sees exactly the batches an uninterrupted run would have seen, whatever the
number of workers.
"""

from __future__ import annotations

from lowssl.sampler import EpochSampler, seed_sequence
from lowssl.semisup.protocols import SemisupProtocol
from lowssl.semisup.subsets import SubsetError
from lowssl.transforms import centre_crop_transform, random_crop_transform


def train_transform(protocol: SemisupProtocol):
    """RandomResizedCrop + horizontal flip, the only training augmentation (paper App. A)."""
    return random_crop_transform(
        protocol.image_size, protocol.train_crop_scale, protocol.interpolation, protocol.mean, protocol.std
    )


def eval_transform(protocol: SemisupProtocol):
    """Resize(size * 256/224) + CenterCrop(size): Resize 256 + CenterCrop 224 at 224 px (paper App. A)."""
    return centre_crop_transform(protocol.image_size, protocol.interpolation, protocol.mean, protocol.std)


def epoch_order(size: int, batch_per_process: int, rank: int, world_size: int, seed: int) -> EpochSampler:
    """This process's share of each epoch's permutation of the ``size`` labelled images, seeded by
    (seed, epoch): every image, every epoch, the last partial batch kept (:mod:`lowssl.sampler`,
    ``remainder="pad"``)."""
    order = EpochSampler(
        size, batch_per_process, rank, world_size, seed, seed_rule=seed_sequence, remainder="pad"
    )
    if order.steps_per_epoch == 0:
        raise SubsetError(
            f"{size} labelled images over {world_size} processes leave one per process: too few to train"
        )
    return order
