"""What one pre-training run holds: its data (:class:`RunData`) and what its epochs train and its
checkpoints save (:class:`Run`). :mod:`pretrain.train` builds both; :mod:`pretrain.checkpointing` saves
and resumes a :class:`Run`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lowssl import distributed
from lowssl.perf import MemoryFormatChoice
from lowssl.pretrain.config import PretrainConfig
from lowssl.pretrain.methods import MultiCropMethod
from lowssl.pretrain.monitors import OnlineProbe
from lowssl.pretrain.optim import Schedules
from lowssl.pretrain.views import GpuViewAugment


@dataclass(frozen=True)
class RunData:
    """The pre-training images and the loader that turns them into batches of views."""

    images: Any  # the whole training split: the monitor's bank and held-out queries come from it too
    train_index: Any  # the images pre-trained on
    held_index: Any  # the monitor's held-out images (paper Sec. 3.2, "Setting")
    loader: torch.utils.data.DataLoader
    sampler: Any  # pretrain.loader's resumable sampler: steps_per_epoch, set_epoch(epoch, first_batch)
    device_augment: GpuViewAugment | None  # the colour half of the views, on the device (device_augment)


@dataclass
class Run:
    """What the epochs train and a checkpoint saves, with the settings every step reads."""

    cfg: PretrainConfig
    ctx: distributed.Context
    run_dir: Path
    provenance: dict  # the resolved config, its hash and the git commit: in every checkpoint and record
    method: MultiCropMethod
    model: nn.Module  # the method, wrapped in DistributedDataParallel under torchrun
    method_config: dict  # method.cfg as it trains (family defaults, SwAV's shortened queue), named
    optimizer: torch.optim.Optimizer
    schedules: Schedules
    scaler: torch.amp.GradScaler
    probe: OnlineProbe | None
    memory_format: MemoryFormatChoice  # the method's and the views' (channels_last: auto measures it)
    total_steps: int
    global_step: int = 0  # optimiser steps taken, over all epochs
    saved_step: int | None = None  # the global step whose weights last.pth holds, once saved or resumed
    metrics: dict = field(default_factory=dict)  # of the last finished epoch
    resumed_from: Path | None = None  # the checkpoint this run resumed, for its banner

    @property
    def budget_spent(self) -> bool:
        """The step budget ``max_steps`` is used up."""
        return self.cfg.max_steps is not None and self.global_step >= self.cfg.max_steps

    @property
    def last_path(self) -> Path:
        return self.run_dir / "last.pth"
