"""Semi-supervised protocols: one YAML per protocol under ``semisup/configs/``, strict and typed.

Numbers are comparable only under the same protocol (docs/protocols.md, "Named protocols"), so every
value that changes them lives in the protocol's YAML with where it comes from, and every record
carries the protocol's name and the hash of its resolved values. ``network`` says what is trained:

- ``projection-mlp``: the paper's protocol (App. A): backbone -> the first two layers of the
  pre-trained DINO projection head (Linear-BN-GELU-Linear-BN-GELU) -> a new Linear, all fine-tuned;
- ``frozen-linear``: DisCo's "semi-supervised" protocol (its Table 7 numbers; docs/protocols.md,
  "Semi-supervised: DisCo frozen linear"): the backbone frozen in eval mode, a Linear on its pooled
  feature.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lowssl import protocols, schedules
from lowssl.config import require
from lowssl.transforms import IMAGENET_MEAN, IMAGENET_STD

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@dataclass
class SemisupProtocol:
    name: str
    paper_protocol: bool  # False: a reduced preset, never to be compared with a paper's number
    source: str  # where the values come from
    network: Literal["projection-mlp", "frozen-linear"]
    epochs_1pct: int
    epochs_10pct: int
    batch_size: int  # global over all processes
    base_lr: float
    lr_batch_scaling: bool = True  # lr = base_lr * batch_size / 256 (paper App. A)
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 0.0
    schedule: Literal["cosine", "step"] = "cosine"  # the LR is set once per epoch (see semisup/train.py)
    final_lr: float = 0.0  # cosine: the LR it ends at
    milestones: tuple[int, ...] = ()  # step: epochs after which the LR is multiplied by gamma
    gamma: float = 0.1
    image_size: int = 224  # RandomResizedCrop size; evaluation: Resize(size * 256/224) + CenterCrop(size)
    interpolation: Literal["bicubic", "bilinear"] = "bicubic"
    train_crop_scale: tuple[float, float] = (0.08, 1.0)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    classifier_init_std: float | None = None  # None: torch's default nn.Linear init
    # Width of the MLP layers built new (--new-head, --random-init); a checkpoint's head keeps its own.
    new_head_hidden_dim: int = 2048
    # "best": evaluate every epoch, report the best; "last": evaluate once, at the end
    report: Literal["best", "last"] = "best"
    eval_batch_size: int = 256
    seed: int = 0
    note: str = ""

    def __post_init__(self) -> None:
        for key in ("epochs_1pct", "epochs_10pct", "batch_size", "new_head_hidden_dim", "eval_batch_size"):
            require(getattr(self, key) > 0, key, f"must be > 0, got {getattr(self, key)}")
        require(self.base_lr > 0, "base_lr", f"must be > 0, got {self.base_lr}")
        require(self.image_size >= 16, "image_size", f"must be >= 16 pixels, got {self.image_size}")
        require(
            0 < self.train_crop_scale[0] <= self.train_crop_scale[1] <= 1,
            "train_crop_scale",
            f"need 0 < min <= max <= 1, got {self.train_crop_scale}",
        )
        schedules.check_epoch_schedule(self.schedule, self.milestones)
        require(
            self.classifier_init_std is None or self.classifier_init_std > 0,
            "classifier_init_std",
            "must be > 0 or null",
        )

    def epochs(self, subset: str) -> int:
        """Epochs for the ``1pct`` or ``10pct`` subset."""
        return {"1pct": self.epochs_1pct, "10pct": self.epochs_10pct}[subset]

    def peak_lr(self) -> float:
        return protocols.scaled_lr(self.base_lr, self.batch_size, self.lr_batch_scaling)

    def epoch_lr(self, epoch: int, epochs: int) -> float:
        """The LR of 0-based ``epoch`` of ``epochs``: cosine from the peak to final_lr, or steps."""
        return schedules.epoch_lr(
            self.schedule, self.peak_lr(), epoch, epochs, self.final_lr, self.milestones, self.gamma
        )


def available() -> list[str]:
    """Names of the protocols under ``semisup/configs/``."""
    return protocols.available(CONFIG_DIR)


def load_protocol(name: str, overrides: list[str] | None = None) -> SemisupProtocol:
    """The protocol ``name`` with ``key=value`` overrides applied (strict). Its name and
    ``paper_protocol`` stay the file's: semisup/report.py derives them when it records the run (the
    subset's epochs and max_steps= count there, the other subset's epochs do not)."""
    return protocols.load_protocol(
        CONFIG_DIR, name, SemisupProtocol, overrides, what="semi-supervised protocol", derive=False
    )
