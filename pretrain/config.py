"""The pre-training config: one YAML per paper experiment, strict and typed.

Sections: ``backbone`` and ``recipe`` at the top, ``method`` (``name`` plus that method's own
config class, so a key another method uses is an error), ``views``, ``optim``, ``data``,
``monitor``, ``checkpoint`` and the run settings. Paper values are cited in the YAML files under
``pretrain/configs/``; defaults here are the paper's where it gives one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from lowssl.backbones import BACKBONES, get_spec
from lowssl.config import from_dict, require
from lowssl.data import DATASETS
from lowssl.pretrain.methods import get_method, method_name
from lowssl.pretrain.optim import OptimConfig
from lowssl.pretrain.views import ViewsConfig


@dataclass
class DataConfig:
    dataset: str = "fashion-mnist"  # a registered dataset (lowssl.data.DATASETS)
    root: str | None = None  # ImageFolder: the folder holding train/ and val/
    image_size: int = 32  # Fashion-MNIST's 28 px upsampled to this (lowssl.data)
    subset: int | None = None  # train on the first N images of the pre-training split (smoke runs)
    num_workers: int = 2
    on_corrupt_image: Literal["fatal", "skip"] = "fatal"

    def __post_init__(self) -> None:
        require(self.dataset in DATASETS, "dataset", DATASETS.unknown(self.dataset))
        require(self.subset is None or self.subset > 0, "subset", f"must be > 0 or null, got {self.subset}")
        require(self.num_workers >= 0, "num_workers", f"must be >= 0, got {self.num_workers}")
        require(
            self.dataset != "imagefolder" or self.root is not None, "root", "dataset imagefolder needs a root"
        )


@dataclass
class MonitorConfig:
    # The authors' online monitor (docs/recipes.md, "Monitoring during training"): weighted 20-NN,
    # T 0.07, on a held-out split of 50 images per class from the training set (paper Sec. 3.2,
    # "Setting").
    knn_every_epochs: int = 1  # 0 = off
    knn_k: int = 20
    knn_temperature: float = 0.07
    held_out_per_class: int = 50
    knn_bank_size: int | None = 10_000  # training images in the kNN bank; null = all
    # Online linear probe on detached student features of global 1 (docs/recipes.md, "Monitoring
    # during training").
    online_linear: bool = True

    def __post_init__(self) -> None:
        require(self.knn_every_epochs >= 0, "knn_every_epochs", f"must be >= 0, got {self.knn_every_epochs}")
        require(self.knn_k > 0, "knn_k", f"must be > 0, got {self.knn_k}")


@dataclass
class CheckpointConfig:
    every_epochs: int = 10  # keep checkpoint_epochNNNN.pth every N epochs (and always last.pth)
    every_steps: int = 0  # also refresh last.pth every N steps inside an epoch; 0 = only at epoch ends


@dataclass
class PretrainConfig:
    backbone: str
    # "baseline" and "ours" are the paper's two recipes (docs/recipes.md, "Baseline and ours");
    # "custom" anything else.
    recipe: Literal["baseline", "ours", "custom"]
    epochs: int
    batch_size: int  # global batch over all processes (paper: 1024 = 8 GPUs x 128, Sec. 4.1)
    method: Any  # the config class of the method registered as method.name (pretrain.methods)
    views: ViewsConfig
    optim: OptimConfig
    # Stochastic depth of the student ViT (timm's drop_path_rate, lowssl.backbones.build_backbone);
    # teachers have none. CNNs: 0.
    drop_path_rate: float = 0.0
    data: DataConfig = field(default_factory=DataConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    experiment: str = "pretrain"
    output_dir: str | None = None  # default runs/<experiment>
    records_dir: str | None = None  # results records; default results/runs/ (lowssl.records)
    resume: str = "auto"  # "auto" (continue from output_dir/last.pth if present), "never", or a path
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: Literal["none", "bf16", "fp16"] = "none"
    sync_bn: bool = True  # SyncBN on the whole model, as the paper's setup (docs/recipes.md, "Optimisation")
    # NHWC activations: true / false, or "auto" (time both formats on the run's shapes at start, keep
    # the faster: lowssl.perf; the choice and its speeds go into the records and config.yaml).
    channels_last: bool | Literal["auto"] = False
    # Colour augmentation on the device (pretrain/views/gpu.py): the loader only decodes, crops and
    # resizes; for hosts whose CPUs cannot feed the GPUs.
    device_augment: bool = False
    # A log.csv / TensorBoard row every N optimiser steps, and always at an epoch's and the run's last
    # step (the values that end an epoch or a run are never skipped).
    log_every_steps: int = 10
    max_steps: int | None = None  # stop after this many optimiser steps in total (smoke tests)

    def __post_init__(self) -> None:
        require(self.backbone in BACKBONES, "backbone", BACKBONES.unknown(self.backbone))
        require(  # it names the run's records (lowssl.records.Record.run_id): refused now, not after training
            re.fullmatch(r"[A-Za-z0-9._-]+", self.experiment) is not None,
            "experiment",
            f"may only contain letters, digits, '.', '_' and '-', got {self.experiment!r}",
        )
        require(
            0 <= self.drop_path_rate < 1, "drop_path_rate", f"must be in [0, 1), got {self.drop_path_rate}"
        )
        require(
            self.drop_path_rate == 0 or get_spec(self.backbone).family == "vit",
            "drop_path_rate",
            f"stochastic depth is for the ViT backbones; {self.backbone} takes 0, got {self.drop_path_rate}",
        )
        if isinstance(self.method, dict):
            self.method = method_config(self.method)
        require(self.epochs > 0, "epochs", f"must be > 0, got {self.epochs}")
        require(self.batch_size > 0, "batch_size", f"must be > 0, got {self.batch_size}")
        require(self.max_steps is None or self.max_steps > 0, "max_steps", "must be > 0 or null")
        require(self.log_every_steps > 0, "log_every_steps", f"must be > 0, got {self.log_every_steps}")
        require(
            self.resume in ("auto", "never") or self.resume.endswith(".pth"),
            "resume",
            f"allowed values: auto, never, or a path to a .pth checkpoint; got '{self.resume}'",
        )

    @property
    def method_name(self) -> str:
        return method_name(self.method)

    @property
    def run_dir(self) -> str:
        return self.output_dir or f"runs/{self.experiment}"


def method_config(section: dict[str, Any]):
    """``{name: dino, alpha: 0.4, ...}`` -> that method's config dataclass (strict)."""
    section = dict(section)
    return from_dict(get_method(section.pop("name", None)).config_class, section, prefix="method")
