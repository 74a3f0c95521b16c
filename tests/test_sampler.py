"""The one epoch sampler (lowssl.sampler): each stage keeps, for the same seed, exactly the order its own
sampler drew before issue 28 merged them (pretrain/loader.py's EpochSampler, semisup/data.py's
EpochOrder); the expected indices were computed with those two classes."""

import pytest

from lowssl.data import DatasetError
from lowssl.pretrain.loader import build_loader
from lowssl.sampler import EpochSampler, seed_plus_epoch, seed_sequence
from lowssl.semisup.data import epoch_order
from lowssl.semisup.subsets import SubsetError


def pretrain_order(size, batch, rank, world_size, seed):
    return EpochSampler(size, batch, rank, world_size, seed, seed_rule=seed_plus_epoch, remainder="drop")


def indices(sampler, epoch: int, start_batch: int = 0) -> list[int]:
    sampler.set_epoch(epoch, start_batch)
    pairs = list(sampler)
    assert len(pairs) == len(sampler) and {e for e, _ in pairs} <= {epoch}
    return [index for _, index in pairs]


# (size, batch per process, rank, world size, seed): {(epoch, start batch): indices}, steps per epoch
PRETRAIN = [
    ((13, 2, 1, 3, 7), {(0, 0): [5, 8, 0, 1], (1, 0): [5, 11, 10, 9], (2, 1): [11, 6]}, 2),
    ((11, 4, 0, 2, 42), {(0, 0): [6, 9, 1, 0], (1, 0): [3, 4, 8, 6], (2, 1): []}, 1),
    ((7, 3, 1, 2, 5), {(0, 0): [0, 2, 5], (1, 0): [4, 3, 6]}, 1),
    ((100, 8, 3, 4, 0), {(2, 1): [60, 40, 96, 18, 45, 31, 33, 58, 13, 77, 41, 44, 79, 17, 35, 57]}, 3),
]
SEMISUP = [
    ((13, 2, 1, 3, 7), {(0, 0): [7, 9, 2, 10], (1, 0): [12, 5, 0, 10], (2, 1): [1, 3]}, 2),
    ((11, 4, 0, 2, 42), {(0, 0): [4, 7, 0, 10, 6, 9], (1, 0): [2, 8, 5, 4, 9, 0], (2, 1): [0, 3]}, 2),
    ((7, 3, 1, 2, 5), {(0, 0): [3, 6, 1], (1, 0): [2, 5, 4]}, 1),
    ((100, 8, 3, 4, 0), {(2, 1): [7, 18, 64, 93, 1, 81, 27, 79, 70, 91, 84, 87, 63, 71, 55, 37]}, 3),
]


@pytest.mark.parametrize("case, expected, steps", PRETRAIN)
def test_pretrain_keeps_its_order_whole_global_batches_seeded_by_seed_plus_epoch(case, expected, steps):
    sampler = pretrain_order(*case)
    assert sampler.steps_per_epoch == steps
    for (epoch, start), order in expected.items():
        assert indices(sampler, epoch, start) == order, (epoch, start)


@pytest.mark.parametrize("case, expected, steps", SEMISUP)
def test_semisup_keeps_its_order_padded_seeded_by_a_seed_sequence(case, expected, steps):
    sampler = epoch_order(*case)
    assert sampler.steps_per_epoch == steps
    for (epoch, start), order in expected.items():
        assert indices(sampler, epoch, start) == order, (epoch, start)


def test_pad_covers_every_image_and_drop_only_whole_global_batches():
    size, batch, world_size = 13, 3, 3
    padded = [indices(epoch_order(size, batch, rank, world_size, 7), 0) for rank in range(world_size)]
    assert list(map(len, padded)) == [5, 5, 5]  # 13 images and the first two again: 3 + 2 each
    assert set().union(*padded) == set(range(size))
    dropped = [indices(pretrain_order(size, batch, rank, world_size, 7), 0) for rank in range(world_size)]
    assert list(map(len, dropped)) == [3, 3, 3] and len(set().union(*dropped)) == 9


def test_a_partial_batch_of_one_image_is_dropped_under_pad():
    # 9 images on one process, batch 4: 4 + 4 + 1, and BatchNorm cannot train on the last one
    sampler = EpochSampler(9, 4, 0, 1, 0, seed_rule=seed_sequence, remainder="pad")
    assert sampler.steps_per_epoch == 2 and len(sampler) == 8
    assert EpochSampler(10, 4, 0, 1, 0, seed_rule=seed_sequence, remainder="pad").steps_per_epoch == 3


def test_too_few_images_for_one_step_is_each_stages_bad_input():
    with pytest.raises(SubsetError, match="leave one per process"):
        epoch_order(2, 4, 0, 2, 0)
    with pytest.raises(DatasetError, match="fewer than one global batch of 8"):
        build_loader(list(range(7)), None, 4, 0, 2, 0, 0, False, False)
    with pytest.raises(ValueError, match="remainder"):
        EpochSampler(8, 4, 0, 1, 0, seed_rule=seed_sequence, remainder="keep")
