"""The linear probe: a linear classifier on a frozen backbone, trained under a named protocol.

The backbone never trains and stays in eval mode (docs/protocols.md, "Linear probe: SSLight"); only
the classifier does, with DDP under torchrun (each process feeds its share of every batch; gradients
are averaged).

Training input, per protocol:
- ``augmented``: every epoch, random crops (RandomResizedCrop + flip) go through the frozen backbone;
- ``features``: features of centre crops, extracted once (and cached), are shuffled into batches.

Evaluation reads centre-crop features, extracted once: the backbone is frozen and deterministic, so
this equals running it on every evaluation, and makes a per-epoch evaluation cheap. Every epoch is
evaluated; ``report: best`` reports the best epoch, ``last`` the final one; both are recorded.

Learning rates change once per epoch, as in the three reference implementations (SSLight
cls_trainer.py sets the cosine value at the start of each epoch; MoCo's and SimReg's
``adjust_learning_rate`` / ``MultiStepLR`` step per epoch).

LARS is ``timm.optim.Lars`` with ``always_adapt`` on the weight and off on the bias: with weight
decay 0 (the authors' probe) that is SSLight's LARS (utils/optimizer.py: trust coefficient 0.001,
1-D parameters not adapted, momentum buffer starting at the first update). With weight decay, timm's
trust ratio differs (pretrain/optim.py explains how), so protocols.py allows LARS with 0 only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import timm.optim
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from lowssl import schedules
from lowssl.distributed import Context
from lowssl.errors import RunFailed
from lowssl.evaluate.protocols import LinearProtocol
from lowssl.metrics import topk_hits
from lowssl.progress import progress
from lowssl.stopping import StopSignals
from lowssl.transforms import random_crop_transform


class DivergedError(RunFailed, RuntimeError):
    """The classifier's loss became NaN or infinite: the protocol's LR does not suit these features."""


STANDARDISE_EPS = 1e-5  # added to the variance, as SimReg / CompRess's FullBatchNorm does


def train_transform(protocol: LinearProtocol):
    """RandomResizedCrop(image_size) + horizontal flip + normalise (docs/protocols.md)."""
    crop = protocol.crop
    return random_crop_transform(
        crop.image_size, protocol.train_crop_scale, protocol.train_interpolation, crop.mean, crop.std
    )


class LinearHead(nn.Module):
    """[L2-normalise, standardise with training-set statistics] -> Linear."""

    def __init__(
        self,
        feature_dim: int,
        num_classes: int,
        init_std: float | None,
        standardise_from: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.standardise = standardise_from is not None
        if self.standardise:
            variance, mean = torch.var_mean(F.normalize(standardise_from.float(), dim=1), dim=0)
            self.register_buffer("mean", mean)
            self.register_buffer("inv_std", (variance + STANDARDISE_EPS).rsqrt())
        self.linear = nn.Linear(feature_dim, num_classes)
        if init_std is not None:
            nn.init.normal_(self.linear.weight, std=init_std)
            nn.init.zeros_(self.linear.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.standardise:
            features = (F.normalize(features, dim=1) - self.mean) * self.inv_std
        return self.linear(features)


def build_optimizer(protocol: LinearProtocol, head: LinearHead) -> torch.optim.Optimizer:
    lr = protocol.peak_lr()
    if protocol.optimizer == "lars":
        groups = [
            {"params": [head.linear.weight], "always_adapt": True},
            {"params": [head.linear.bias], "always_adapt": False},
        ]
        return timm.optim.Lars(groups, lr=lr, momentum=protocol.momentum, trust_coeff=0.001)
    if protocol.optimizer == "sgd":
        return torch.optim.SGD(
            head.parameters(), lr=lr, momentum=protocol.momentum, weight_decay=protocol.weight_decay
        )
    return torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=protocol.weight_decay)


def epoch_lr(protocol: LinearProtocol, epoch: int) -> float:
    """The learning rate of 0-based ``epoch``: cosine from the peak to final_lr, or steps at milestones."""
    return schedules.epoch_lr(
        protocol.schedule,
        protocol.peak_lr(),
        epoch,
        protocol.epochs,
        protocol.final_lr,
        protocol.milestones,
        protocol.gamma,
    )


Batches = Callable[[int], Iterator[tuple[torch.Tensor, torch.Tensor]]]


def feature_batches(
    features: torch.Tensor, labels: torch.Tensor, protocol: LinearProtocol, ctx: Context
) -> Batches:
    """This process's batches of stored features for an epoch (batch_size 0: its whole share at once)."""
    sampler = DistributedSampler(
        range(len(features)), ctx.world_size, ctx.rank, shuffle=True, seed=protocol.seed
    )
    batch = protocol.process_batch(ctx.world_size) or len(sampler)
    features, labels = features.to(ctx.device), labels.to(ctx.device)  # once: every epoch reads them all

    def batches(epoch: int):
        sampler.set_epoch(epoch)
        order = torch.tensor(list(sampler))
        for start in range(0, len(order), batch):
            index = order[start : start + batch].to(ctx.device)
            yield features[index], labels[index]

    return batches


def augmented_batches(
    images, frozen: nn.Module, protocol: LinearProtocol, ctx: Context, workers: int
) -> Batches:
    """This process's batches of features of fresh random crops, through the frozen backbone."""
    sampler = DistributedSampler(images, ctx.world_size, ctx.rank, shuffle=True, seed=protocol.seed)
    generator = torch.Generator().manual_seed(protocol.seed)  # seeds the workers' augmentation
    loader = DataLoader(
        images,
        batch_size=protocol.process_batch(ctx.world_size),
        sampler=sampler,
        num_workers=workers,
        generator=generator,
        pin_memory=ctx.device.type == "cuda",
        persistent_workers=workers > 0,
    )

    def batches(epoch: int):
        sampler.set_epoch(epoch)
        bar = progress(loader, f"epoch {epoch + 1}", enabled=ctx.is_main)
        for crops, labels in bar:
            yield frozen(crops.to(ctx.device, non_blocking=True)), labels.to(ctx.device, non_blocking=True)

    return batches


@torch.no_grad()
def accuracy(
    head: nn.Module, features: torch.Tensor, labels: torch.Tensor, device, chunk: int = 8192
) -> tuple[float, float]:
    """Top-1 and top-5 (top-min(5, classes)) accuracy in percent."""
    correct1 = correct5 = 0
    for start in range(0, len(features), chunk):
        logits = head(features[start : start + chunk].to(device))
        hits1, hits5 = topk_hits(logits, labels[start : start + chunk].to(device))
        correct1 += hits1.item()
        correct5 += hits5.item()
    return 100.0 * correct1 / len(features), 100.0 * correct5 / len(features)


@dataclass
class LinearResult:
    top1: float  # of the reported epoch (protocol.report)
    top5: float
    reported_epoch: int  # 1-based
    steps: int  # optimiser steps run, over all epochs
    top1_per_epoch: list[float] = field(default_factory=list)
    top5_per_epoch: list[float] = field(default_factory=list)
    head_state: dict = field(default_factory=dict)

    @property
    def last_top1(self) -> float:
        return self.top1_per_epoch[-1]


def train_linear(
    protocol: LinearProtocol,
    batches: Batches,
    feature_dim: int,
    num_classes: int,
    eval_features: torch.Tensor,
    eval_labels: torch.Tensor,
    ctx: Context,
    standardise_from: torch.Tensor | None = None,
) -> LinearResult:
    """Train the classifier for ``protocol.epochs`` epochs, evaluating after each one."""
    torch.manual_seed(protocol.seed)
    head = LinearHead(feature_dim, num_classes, protocol.init_std, standardise_from).to(ctx.device)
    trained = head
    if ctx.distributed:
        trained = DistributedDataParallel(
            head, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None
        )
    optimizer = build_optimizer(protocol, head)
    top1s, top5s, best_state, steps = [], [], None, 0
    bar = progress(range(protocol.epochs), f"linear {protocol.name}", enabled=ctx.is_main, leave=True)
    # The probe keeps no checkpoint: a stop signal ends it after a step, with nothing recorded.
    with StopSignals(ctx.device) as stop:
        for epoch in bar:
            for group in optimizer.param_groups:
                group["lr"] = epoch_lr(protocol, epoch)
            head.train()
            for step, (features, labels) in enumerate(batches(epoch), start=1):
                loss = F.cross_entropy(trained(features), labels)
                if not torch.isfinite(loss):
                    raise DivergedError(
                        f"the linear probe diverged (loss {loss.item()}) in epoch {epoch + 1} of protocol "
                        f"{protocol.name} at lr {epoch_lr(protocol, epoch):g}; no result was recorded"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                steps += 1
                if stop.requested():
                    bar.close()
                    stop.stop(
                        f"the linear probe ({protocol.name}) at epoch {epoch + 1} of {protocol.epochs}, "
                        f"step {step}",
                        saved=None,
                    )
            head.eval()
            top1, top5 = accuracy(head, eval_features, eval_labels, ctx.device)
            if not top1s or top1 > max(top1s):
                best_state = {k: v.detach().cpu().clone() for k, v in head.state_dict().items()}
            top1s.append(top1)
            top5s.append(top5)
            bar.set_postfix(loss=f"{loss.item():.4f}", top1=f"{top1:.2f}")
    if protocol.report == "best":
        best = max(range(len(top1s)), key=top1s.__getitem__)  # the first of equal epochs
        return LinearResult(top1s[best], top5s[best], best + 1, steps, top1s, top5s, best_state)
    last_state = {k: v.detach().cpu() for k, v in head.state_dict().items()}
    return LinearResult(top1s[-1], top5s[-1], protocol.epochs, steps, top1s, top5s, last_state)
