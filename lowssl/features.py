"""Features of a frozen backbone: what the k-NN, the linear probe and the pre-training monitor read.

Features are what the backbone returns in eval mode (BN statistics fixed; docs/protocols.md,
"Linear probe: SSLight"): the pooled feature of a CNN, and for a ViT the CLS token after the final
norm, or the CLS tokens of the last N blocks concatenated where a protocol asks for them (the
authors' ViT probe, N = 4).

Given a distributed :class:`~lowssl.distributed.Context`, each process extracts every world_size-th
image (DistributedSampler without shuffling); the parts are gathered in chunks (bounded device
memory), put back in dataset order, and the images DistributedSampler repeats to even out the shards
are trimmed. Without one (the pre-training monitor, on the main process only) one process extracts
everything.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, default_collate

from lowssl import distributed
from lowssl.data import DatasetError
from lowssl.distributed import Context
from lowssl.perf import MemoryFormatChoice, Workload, choose_memory_format, forward_pass
from lowssl.progress import progress

GATHER_ROWS = 8192  # rows per all_gather: keeps device memory bounded for ImageNet-size sets


class FrozenFeatures(nn.Module):
    """The frozen backbone as a feature function: eval mode, no gradient, fixed BN statistics.

    ``channels_last``: the memory format of the feature pass, true / false or "auto": the faster of
    the two on the first batch's shape, timed there (lowssl.perf; a CNN's only: a ViT stays
    contiguous), so that features read from a cache cost no measurement. ``arch`` names the
    backbone in the measurement's cache key and its printed line.
    """

    def __init__(
        self,
        backbone: nn.Module,
        family: str,
        feature_dim: int,
        vit_last_blocks: int = 1,
        channels_last: bool | str = False,
        arch: str = "",
    ) -> None:
        super().__init__()
        self.backbone = backbone.eval().requires_grad_(False)
        self.family, self.arch, self.channels_last = family, arch, channels_last
        self.last_blocks = vit_last_blocks if family == "vit" else 1
        self.feature_dim = feature_dim * self.last_blocks
        self.kind = "pooled" if self.last_blocks == 1 else f"vit-cls-last{self.last_blocks}"
        self.memory_format: MemoryFormatChoice | None = None  # chosen at the first batch

    def train(self, mode: bool = True) -> FrozenFeatures:
        return self  # stays in eval mode whatever the caller asks

    def performance(self) -> dict:
        """The records' memory-format details of the feature pass (none ran: every feature cached)."""
        if self.memory_format is None:
            return {"memory_format": "no feature pass (cached features)"}
        return self.memory_format.details()

    def _choose_memory_format(self, images: torch.Tensor) -> MemoryFormatChoice:
        def workload() -> Workload:
            step_for = forward_pass(self.backbone, tuple(images.shape), images.device)  # a CNN's
            key = {
                "task": "feature-pass",
                "backbone": self.arch,
                "precision": "none",
                "shape": list(images.shape),
            }
            return Workload(step_for, key, len(images))

        main = not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
        what = f"feature pass {self.arch}".rstrip()
        choice = choose_memory_format(self.channels_last, self.family, workload, images.device, what, main)
        self.backbone.to(memory_format=choice.memory_format)
        return choice

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.memory_format is None:
            self.memory_format = self._choose_memory_format(images)
        images = images.contiguous(memory_format=self.memory_format.memory_format)
        if self.last_blocks == 1:
            return self.backbone(images).float()
        # timm applies the final norm to every returned block, as DINO's get_intermediate_layers does.
        blocks = self.backbone.get_intermediate_layers(
            images, n=self.last_blocks, return_prefix_tokens=True, norm=True
        )
        return torch.cat([prefix[:, 0] for _, prefix in blocks], dim=-1).float()


class _SkipUnreadable(Dataset):
    """``dataset`` with ``None`` in place of an image that cannot be read."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        try:
            return self.dataset[index]
        except DatasetError:
            return None


def _collate_readable(batch):
    return default_collate([item for item in batch if item is not None])


def _in_dataset_order(local: torch.Tensor, total: int, ctx: Context) -> torch.Tensor:
    """Gather every process's rows (rank r holds dataset rows r, r + W, ...) back in dataset order."""
    rows = []
    for start in range(0, len(local), GATHER_ROWS):
        part = distributed.all_gather_cat(local[start : start + GATHER_ROWS].to(ctx.device)).cpu()
        rows.append(
            part.view(ctx.world_size, -1, *part.shape[1:]).transpose(0, 1).reshape(-1, *part.shape[1:])
        )
    return torch.cat(rows)[:total]  # the tail holds the rows DistributedSampler repeated


@torch.no_grad()
def extract_features(
    model: nn.Module,
    dataset: Dataset,
    device: torch.device | str,
    batch_size: int = 256,
    workers: int = 0,
    ctx: Context | None = None,
    skip_unreadable: bool = False,
    desc: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (n, D) of ``dataset``'s images in dataset order, float32 on the CPU, and their labels.

    ``model`` runs in eval mode (its mode is restored after). With a distributed ``ctx`` the work is
    shared and every process returns every row; ``skip_unreadable`` (one process only) leaves out the
    images that cannot be read. ``desc``: the progress bar's title (on the main process); None: no bar.
    """
    distributed_run = ctx is not None and ctx.distributed
    if distributed_run and skip_unreadable:
        raise ValueError("skip_unreadable needs a single process: the shards must keep equal sizes")
    sampler = (
        DistributedSampler(dataset, ctx.world_size, ctx.rank, shuffle=False) if distributed_run else None
    )
    loader = DataLoader(
        _SkipUnreadable(dataset) if skip_unreadable else dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=_collate_readable if skip_unreadable else None,
    )
    show = desc is not None and (ctx is None or ctx.is_main)
    was_training = model.training
    model.eval()
    features, labels = [], []
    for images, targets in progress(loader, desc or "", enabled=show):
        features.append(model(images.to(device, non_blocking=True)).float().cpu())
        labels.append(targets)
    model.train(was_training)
    features, labels = torch.cat(features), torch.cat(labels)
    if distributed_run:
        features = _in_dataset_order(features, len(dataset), ctx)
        labels = _in_dataset_order(labels, len(dataset), ctx)
    return features, labels
