"""The evaluation's features: centre crops of a split through the frozen backbone, cached on disk.

Extraction (sharded over processes under torchrun) is :func:`lowssl.features.extract_features`.
Features of centre crops are deterministic for a given backbone, so they are cached on disk, keyed by
everything that changes them: checkpoint sha256, arch, branch, feature kind, dataset, root, split,
the images' content and labels (the dataset's ``fingerprint``, lowssl.data: a class folder swapped or
an image edited is another key), the exact images (a hash of their indices) and the transform. A cache
file carries its key and is used only when the key matches; it is memory-mapped, not read whole (an
ImageNet-size file is 10 GB).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lowssl import distributed
from lowssl.data import IndexedImages
from lowssl.distributed import Context
from lowssl.errors import BadInput
from lowssl.evaluate.protocols import CentreCrop
from lowssl.features import FrozenFeatures, extract_features
from lowssl.io import atomic_torch_save

#: Training images the BN-recalibrated floor re-estimates its statistics on (in batches of 250).
BN_RECALIBRATION_IMAGES = 2000


def recalibrate_bn(
    backbone: nn.Module,
    train: Split,
    crop: CentreCrop,
    device: torch.device,
    images: int = BN_RECALIBRATION_IMAGES,
    batch_size: int = 250,
) -> int:
    """Re-estimate every BatchNorm's running statistics of ``backbone`` on the first ``images``
    training images (centre crops), weights unchanged: fvcore's precise BN (the true average of the
    per-batch statistics). A random-init backbone otherwise keeps BN at mean 0 / variance 1, i.e. no
    normalisation at all, which measures BN statistics as much as features. Returns the images used."""
    from fvcore.nn.precise_bn import update_bn_stats

    subset = Split(train.dataset, train.root, train.split, train.images, train.indices[:images])
    loader = DataLoader(subset.with_transform(crop.transform()), batch_size=batch_size)
    backbone.to(device).train()
    update_bn_stats(backbone, (batch.to(device) for batch, _ in loader), num_iters=len(loader))
    backbone.eval()
    return len(subset)


@dataclass
class Split:
    """Which images: the ``indices`` of a split of a lowssl dataset (``images`` without a transform)."""

    dataset: str
    root: str | None
    split: str  # lowssl's "train" or "val"
    images: Dataset
    indices: np.ndarray

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def labels(self) -> torch.Tensor:
        return torch.as_tensor(np.asarray(self.images.targets)[self.indices], dtype=torch.long)

    @property
    def num_classes(self) -> int:
        return len(self.images.classes)

    @property
    def fingerprint(self) -> str:
        """The content and labels of the split's dataset (computed once per dataset object)."""
        return self.images.fingerprint

    def with_transform(self, transform) -> IndexedImages:
        return IndexedImages(self.images, self.indices, transform)

    def key(self) -> dict:
        digest = hashlib.sha256(np.asarray(self.indices, dtype=np.int64).tobytes()).hexdigest()[:16]
        return {
            "dataset": self.dataset,
            "root": self.root,
            "split": self.split,
            "fingerprint": self.fingerprint,
            "indices": digest,
        }


class NonFiniteFeaturesError(BadInput, ValueError):
    """A backbone's features hold NaN or inf: nothing can be computed from them."""


@dataclass
class FeatureStore:
    """Centre-crop features of one backbone, from the on-disk cache when the key matches.

    ``identity``: checkpoint (sha256 or random-init id), arch, branch. ``cache_dir`` None turns the
    cache off; ``refresh`` re-extracts and overwrites. Features holding NaN or inf are an error
    (:class:`NonFiniteFeaturesError`), never cached, never returned.
    """

    model: FrozenFeatures
    identity: dict
    ctx: Context
    batch_size: int
    workers: int
    cache_dir: Path | None
    refresh: bool = False
    source: str = ""  # where the backbone came from, for errors (the checkpoint's path)

    def key(self, split: Split, crop: CentreCrop) -> dict:
        return {**self.identity, "feature": self.model.kind, **split.key(), "transform": crop.describe()}

    def path(self, key: dict) -> Path:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        readable = "-".join(str(key[k]) for k in ("checkpoint", "arch", "branch", "dataset", "split"))
        return self.cache_dir / f"{readable.replace('/', '_')[:120]}-{digest}.pt"

    def get(self, split: Split, crop: CentreCrop) -> torch.Tensor:
        key = self.key(split, crop)
        path = self.path(key) if self.cache_dir is not None else None
        if path is not None and path.is_file() and not self.refresh:
            stored = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
            if stored.get("key") == key:
                return self._finite(stored["features"], split)
        images = split.with_transform(crop.transform())
        features, _ = extract_features(
            self.model,
            images,
            self.ctx.device,
            self.batch_size,
            self.workers,
            self.ctx,
            desc=f"features {split.split}",
        )
        self._finite(features, split)
        if path is not None and self.ctx.is_main:
            atomic_torch_save({"key": key, "features": features}, path)
        distributed.barrier()
        return features

    def _finite(self, features: torch.Tensor, split: Split) -> torch.Tensor:
        """``features``, or :class:`NonFiniteFeaturesError`: a k-NN vote or a linear probe on NaN / inf
        returns a number (chance, or whatever argmax makes of NaN) that means nothing."""
        bad = int((~torch.isfinite(features)).any(dim=1).sum())
        if bad:
            source = self.source or self.identity["checkpoint"]
            raise NonFiniteFeaturesError(
                f"{source} ({self.identity['arch']}, branch {self.identity['branch']}): the features of "
                f"{bad} of {len(features)} {split.dataset} {split.split} images hold NaN or inf (its "
                "weights or BN statistics overflow): no result is computed or recorded"
            )
        return features
