"""Frozen-backbone features: what the probe reads, extracted sharded over processes, cached on disk.

Features are what the backbone returns in eval mode (BN statistics fixed; docs/protocols.md,
"Linear probe: SSLight"): the pooled feature of a CNN, and for a ViT the CLS token after the final
norm, or the CLS tokens of the last N blocks concatenated where a protocol asks for them (the
authors' ViT probe, N = 4).

Under torchrun each process extracts every world_size-th image (DistributedSampler without
shuffling); the parts are gathered in chunks (bounded device memory), put back in dataset order, and
the images DistributedSampler repeats to even out the shards are trimmed.

Features of centre crops are deterministic for a given backbone, so they are cached on disk, keyed by
everything that changes them: checkpoint sha256, arch, branch, feature kind, dataset, root, split,
the exact images (a hash of their indices) and the transform. A cache file carries its key and is
used only when the key matches.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from evaluate.protocols import CentreCrop
from lowssl import distributed
from lowssl.data import IndexedImages
from lowssl.distributed import Context
from lowssl.io import atomic_torch_save

GATHER_ROWS = 8192  # rows per all_gather: keeps device memory bounded for ImageNet-size sets


def centre_crop_transform(crop: CentreCrop):
    """Resize(image_size * 256/224) + CenterCrop(image_size) + normalise (docs/protocols.md)."""
    from torchvision.transforms import v2

    return v2.Compose([
        v2.PILToTensor(),
        v2.Resize(crop.describe()["resize"], interpolation=v2.InterpolationMode(crop.interpolation), antialias=True),
        v2.CenterCrop(crop.image_size),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(crop.mean, crop.std),
    ])  # fmt: skip


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
    loader = DataLoader(subset.with_transform(centre_crop_transform(crop)), batch_size=batch_size)
    backbone.to(device).train()
    update_bn_stats(backbone, (batch.to(device) for batch, _ in loader), num_iters=len(loader))
    backbone.eval()
    return len(subset)


class FrozenFeatures(nn.Module):
    """The frozen backbone as a feature function: eval mode, no gradient, fixed BN statistics."""

    def __init__(self, backbone: nn.Module, family: str, feature_dim: int, vit_last_blocks: int = 1) -> None:
        super().__init__()
        self.backbone = backbone.eval().requires_grad_(False)
        self.last_blocks = vit_last_blocks if family == "vit" else 1
        self.feature_dim = feature_dim * self.last_blocks
        self.kind = "pooled" if self.last_blocks == 1 else f"vit-cls-last{self.last_blocks}"

    def train(self, mode: bool = True) -> FrozenFeatures:
        return self  # stays in eval mode whatever the caller asks

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.last_blocks == 1:
            return self.backbone(images).float()
        # timm applies the final norm to every returned block, as DINO's get_intermediate_layers does.
        blocks = self.backbone.get_intermediate_layers(
            images, n=self.last_blocks, return_prefix_tokens=True, norm=True
        )
        return torch.cat([prefix[:, 0] for _, prefix in blocks], dim=-1).float()


def _in_dataset_order(local: torch.Tensor, total: int, ctx: Context) -> torch.Tensor:
    """Gather every process's rows (rank r holds dataset rows r, r + W, ...) back in dataset order."""
    if not ctx.distributed:
        return local
    rows = []
    for start in range(0, len(local), GATHER_ROWS):
        part = distributed.all_gather_cat(local[start : start + GATHER_ROWS].to(ctx.device)).cpu()
        rows.append(part.view(ctx.world_size, -1, part.shape[1]).transpose(0, 1).reshape(-1, part.shape[1]))
    return torch.cat(rows)[:total]  # the tail holds the rows DistributedSampler repeated


@torch.no_grad()
def extract_features(model: FrozenFeatures, dataset, ctx: Context, batch_size: int, workers: int,
                     desc: str = "features") -> torch.Tensor:  # fmt: skip
    """Features (len(dataset), D) in dataset order, float32 on the CPU, on every process."""
    sampler = (
        DistributedSampler(dataset, ctx.world_size, ctx.rank, shuffle=False) if ctx.distributed else None
    )
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers)
    parts = [model(images.to(ctx.device, non_blocking=True)).cpu()
             for images, _ in tqdm(loader, desc=desc, disable=not ctx.is_main, leave=False, dynamic_ncols=True)]  # fmt: skip
    return _in_dataset_order(torch.cat(parts), len(dataset), ctx)


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

    def with_transform(self, transform) -> IndexedImages:
        return IndexedImages(self.images, self.indices, transform)

    def key(self) -> dict:
        digest = hashlib.sha256(np.asarray(self.indices, dtype=np.int64).tobytes()).hexdigest()[:16]
        return {"dataset": self.dataset, "root": self.root, "split": self.split, "indices": digest}


@dataclass
class FeatureStore:
    """Centre-crop features of one backbone, from the on-disk cache when the key matches.

    ``identity``: checkpoint (sha256 or random-init id), arch, branch. ``cache_dir`` None turns the
    cache off; ``refresh`` re-extracts and overwrites.
    """

    model: FrozenFeatures
    identity: dict
    ctx: Context
    batch_size: int
    workers: int
    cache_dir: Path | None
    refresh: bool = False

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
            stored = torch.load(path, map_location="cpu", weights_only=True)
            if stored.get("key") == key:
                return stored["features"]
        images = split.with_transform(centre_crop_transform(crop))
        features = extract_features(self.model, images, self.ctx, self.batch_size, self.workers,
                                    desc=f"features {split.split}")  # fmt: skip
        if path is not None and self.ctx.is_main:
            atomic_torch_save({"key": key, "features": features}, path)
        distributed.barrier()
        return features
