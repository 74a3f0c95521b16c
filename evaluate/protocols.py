"""Named evaluation protocols: one YAML per protocol under ``evaluate/configs/``, strict and typed.

Numbers of a linear probe are comparable only under the same protocol (docs/protocols.md, "Named
protocols"), so every value that changes them lives in the protocol's YAML, with where it comes from,
and every record carries the protocol's name and the hash of its resolved config. ``kind`` tells
linear protocols (:class:`LinearProtocol`) from k-NN ones (:class:`KnnProtocol`).

A protocol may say ``_base_: other.yaml`` and change a few values (the reduced-epoch Fashion-MNIST
presets do); ``key=value`` overrides on the command line apply last, and a protocol whose values they
change is another protocol: named after them (``sslight+epochs=1``), with ``paper_protocol`` false.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from lowssl import protocols, schedules
from lowssl.config import ConfigError, require
from lowssl.transforms import IMAGENET_MEAN, IMAGENET_STD, centre_crop_transform, resize_size

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

Interpolation = Literal["bicubic", "bilinear"]


@dataclass
class CentreCrop:
    """How an image becomes the centre crop that features are taken from: Resize(image_size * 256/224)
    then CenterCrop(image_size), normalised; at 224 px the usual Resize 256 + CenterCrop 224."""

    image_size: int = 224
    interpolation: Interpolation = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        require(self.image_size >= 16, "image_size", f"must be >= 16 pixels, got {self.image_size}")
        require(all(s > 0 for s in self.std), "std", f"every value must be > 0, got {self.std}")

    def describe(self) -> dict:
        """The transform as plain data: part of the feature-cache key."""
        return {"resize": resize_size(self.image_size), **dataclasses.asdict(self)}

    def transform(self):
        """The torchvision transform of a PIL image to its normalised centre crop."""
        return centre_crop_transform(self.image_size, self.interpolation, self.mean, self.std)


@dataclass
class VitSettings:
    """What a protocol does differently for ViT backbones (lowssl.backbones family "vit")."""

    last_blocks: int = 1  # the feature: CLS tokens of the last N blocks (after the final norm), concatenated
    optimizer: Literal["lars", "sgd", "adamw"] | None = None  # None: the protocol's optimizer
    base_lr: float | None = None  # None: the protocol's base_lr
    batch_size: int | None = None  # None: the protocol's batch_size (global, as the protocol's)

    def __post_init__(self) -> None:
        require(self.last_blocks >= 1, "last_blocks", f"must be >= 1, got {self.last_blocks}")
        require(self.batch_size is None or self.batch_size > 0, "batch_size", "must be > 0 or null")


@dataclass
class LinearProtocol:
    """A linear probe on a frozen backbone (backbone in eval mode, no gradient, BN statistics fixed)."""

    name: str
    kind: Literal["linear"]
    paper_protocol: bool  # False: lowssl's own protocol or a reduced preset, not comparable with a paper
    source: str  # where the values come from
    # "augmented": every epoch sees fresh random crops through the frozen backbone;
    # "features": features of centre crops are extracted once (and cached), the classifier trains on them.
    train_input: Literal["augmented", "features"]
    epochs: int
    batch_size: int  # global over all processes; 0 = full batch (one step per epoch)
    optimizer: Literal["lars", "sgd", "adamw"]
    base_lr: float
    schedule: Literal["cosine", "step"]
    crop: CentreCrop = field(default_factory=CentreCrop)  # validation / feature extraction
    train_crop_scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop (+ flip) for "augmented"
    train_interpolation: Interpolation = "bicubic"
    # "l2_standardise": L2-normalise, then standardise with mean / variance of the (L2-normalised)
    # centre-crop features of the training set, as SimReg / CompRess do (docs/protocols.md,
    # "Linear probe: SimReg and CompRess").
    feature_normalisation: Literal["none", "l2_standardise"] = "none"
    init_std: float | None = 0.01  # weights N(0, init_std), bias 0; null: torch's default init
    lr_batch_scaling: bool = True  # lr = base_lr * batch_size / 256
    momentum: float = 0.9
    weight_decay: float = 0.0
    final_lr: float = 0.0  # cosine: the LR it ends at
    milestones: tuple[int, ...] = ()  # step: epochs after which the LR is multiplied by gamma
    gamma: float = 0.1
    # null: the budget is ``epochs`` passes over whatever training set is given. N: it is the optimiser
    # steps of ``epochs`` passes over N images, kept on a smaller training set (--train-subset) by
    # running more epochs (:meth:`for_training_set`), for a preset whose result follows its step count
    # rather than its passes (sslight_tiny.yaml: LARS learns by the sum of lr x trust over the steps).
    budget_images: int | None = None
    # The fewest training images the budget was measured converged on (top-1 moves < 0.5 pt at twice the
    # budget; the YAML gives the numbers): on fewer, evaluate warns and the record says so. null: no
    # such claim (the paper protocols: the authors' values at the authors' scale).
    converged_from_images: int | None = None
    report: Literal["last", "best"] = "last"  # "best": the best epoch on the evaluation set
    eval_batch_size: int = 256
    seed: int = 0
    vit: VitSettings = field(default_factory=VitSettings)
    note: str = ""

    def __post_init__(self) -> None:
        require(self.epochs > 0, "epochs", f"must be > 0, got {self.epochs}")
        require(self.batch_size >= 0, "batch_size", f"must be >= 0 (0 = full batch), got {self.batch_size}")
        require(
            self.batch_size > 0 or self.train_input == "features",
            "batch_size",
            "full batch (0) needs train_input: features",
        )
        require(
            self.batch_size > 0 or not self.lr_batch_scaling,
            "lr_batch_scaling",
            "the linear scaling rule needs a batch size; set it false for full batch",
        )
        require(
            self.budget_images is None or (self.budget_images > 0 and self.batch_size > 0),
            "budget_images",
            f"must be > 0 or null, and needs a batch size (full batch is one step per epoch), got "
            f"{self.budget_images} with batch_size {self.batch_size}",
        )
        require(
            self.converged_from_images is None or self.converged_from_images > 0,
            "converged_from_images",
            f"must be > 0 or null, got {self.converged_from_images}",
        )
        require(self.base_lr > 0, "base_lr", f"must be > 0, got {self.base_lr}")
        require(
            0 < self.train_crop_scale[0] <= self.train_crop_scale[1] <= 1,
            "train_crop_scale",
            f"need 0 < min <= max <= 1, got {self.train_crop_scale}",
        )
        schedules.check_epoch_schedule(self.schedule, self.milestones)
        require(self.init_std is None or self.init_std > 0, "init_std", "must be > 0 or null")
        # timm's Lars equals SSLight's / DINO's LARS only without weight decay (see evaluate/linear.py).
        require(
            self.optimizer != "lars" or self.weight_decay == 0,
            "weight_decay",
            "LARS here supports weight_decay 0 only (the authors' linear probe uses 0)",
        )

    def peak_lr(self) -> float:
        return protocols.scaled_lr(self.base_lr, self.batch_size, self.lr_batch_scaling)

    def process_batch(self, world_size: int) -> int:
        """Each process's share of a batch (0: full batch)."""
        if self.batch_size % world_size:
            raise ConfigError(
                f"config key 'batch_size': {self.batch_size} does not split evenly over "
                f"{world_size} processes"
            )
        return self.batch_size // world_size

    def steps_per_epoch(self, images: int, world_size: int = 1) -> int:
        """Optimiser steps of one epoch over ``images`` training images as evaluate/linear.py batches
        them: each process's share padded to ceil(images / world_size) (DistributedSampler), the last
        batch short (no drop_last); full batch: one."""
        batch = self.process_batch(world_size)
        return math.ceil(math.ceil(images / world_size) / batch) if batch else 1

    def for_training_set(self, images: int, world_size: int = 1) -> LinearProtocol:
        """The protocol as it runs on ``images`` training images. With ``budget_images``, the epochs rise
        (never fall) to run at least the optimiser steps of ``epochs`` passes over ``budget_images``
        images, the step milestones at the same fractions of the run (a cosine follows the epochs
        itself); on ``budget_images`` images it is the protocol as written."""
        if self.budget_images is None:
            return self
        steps = self.epochs * self.steps_per_epoch(self.budget_images, world_size)
        epochs = max(self.epochs, math.ceil(steps / self.steps_per_epoch(images, world_size)))
        if epochs == self.epochs:
            return self
        milestones = tuple(round(m * epochs / self.epochs) for m in self.milestones)
        return dataclasses.replace(self, epochs=epochs, milestones=milestones)

    def measured_converged(self, images: int) -> bool | None:
        """Whether the budget was measured converged on ``images`` training images: as many as
        ``converged_from_images`` or more; None where the protocol makes no such claim."""
        return None if self.converged_from_images is None else images >= self.converged_from_images

    def for_family(self, family: str) -> LinearProtocol:
        """The protocol as it applies to a backbone family: ViTs take the ``vit`` section's values."""
        if family != "vit":
            return self
        changes = {
            k: getattr(self.vit, k)
            for k in ("optimizer", "base_lr", "batch_size")
            if getattr(self.vit, k) is not None
        }
        return dataclasses.replace(self, **changes)


@dataclass
class KnnProtocol:
    """Weighted k-NN on L2-normalised centre-crop features, training set -> evaluation set."""

    name: str
    kind: Literal["knn"]
    paper_protocol: bool  # False: a reduced preset, never to be compared with a paper's number
    source: str
    k: int = 20
    temperature: float = 0.07
    crop: CentreCrop = field(default_factory=CentreCrop)
    eval_batch_size: int = 256
    note: str = ""

    def __post_init__(self) -> None:
        require(self.k >= 1, "k", f"must be >= 1, got {self.k}")
        require(self.temperature > 0, "temperature", f"must be > 0, got {self.temperature}")


_CLASSES: dict[str, type] = {"linear": LinearProtocol, "knn": KnnProtocol}


def available(kind: str) -> list[str]:
    """Names of the protocols of ``kind`` ("linear" or "knn") under ``evaluate/configs/``."""
    return protocols.available(CONFIG_DIR, kind)


def load_protocol(name: str, kind: str, overrides: list[str] | None = None):
    """The protocol ``name`` of ``kind`` with ``key=value`` overrides applied (strict); changed values
    make another protocol (lowssl.protocols.load_protocol)."""
    return protocols.load_protocol(CONFIG_DIR, name, _CLASSES[kind], overrides, kind=kind)
