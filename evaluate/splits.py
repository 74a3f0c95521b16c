"""Which images an evaluation trains on and evaluates on: the dataset's splits, a held-out part of its
training split (``--held-out``), fixed random subsets (``--train-subset`` / ``--eval-subset``), and the
records' ``dataset`` column that names them all."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lowssl.config import ConfigError
from lowssl.data import build_dataset, held_out_split
from lowssl.evaluate.features import Split

SUBSET_SEED = 0  # --train-subset / --eval-subset: a fixed random choice, the same on every run


def _random_subset(indices: np.ndarray, size: int | None, what: str) -> np.ndarray:
    if size is None:
        return indices
    if not 0 < size <= len(indices):
        raise ConfigError(
            f"--{what}-subset {size}: must be between 1 and {len(indices)} (the images available)"
        )
    return np.sort(np.random.default_rng(SUBSET_SEED).choice(indices, size=size, replace=False))


def build_splits(args, image_size: int) -> tuple[Split, Split, str]:
    """(training images, evaluation images, the dataset column of the records)."""
    root = str(Path(args.data_root).resolve()) if args.data_root else None
    train_images = build_dataset(args.dataset, "train", root, image_size)
    train_index = np.arange(len(train_images))
    label = args.dataset if args.dataset != "imagefolder" else f"imagefolder:{Path(root).name}"
    if args.held_out:
        train_index, eval_index = held_out_split(train_images.targets, args.held_out_per_class)
        evaluation = Split(args.dataset, root, "train", train_images, eval_index)
        label += f"/held-out-{args.held_out_per_class}pc"
    else:
        eval_images = build_dataset(args.dataset, "val", root, image_size)
        evaluation = Split(args.dataset, root, "val", eval_images, np.arange(len(eval_images)))
    train = Split(
        args.dataset, root, "train", train_images, _random_subset(train_index, args.train_subset, "train")
    )
    evaluation.indices = _random_subset(evaluation.indices, args.eval_subset, "eval")
    label += f"/train{args.train_subset}" if args.train_subset else ""
    label += f"/eval{args.eval_subset}" if args.eval_subset else ""
    return train, evaluation, label
