"""What ``python -m lowssl.semisup finetune`` was asked for: :class:`FinetuneArgs`."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from lowssl.config import ConfigError, parse_overrides
from lowssl.data import PAPER_HELD_OUT_PER_CLASS, default_workers
from lowssl.subject import Subject

#: The override ``epochs=N``: the epochs of the subset the run fine-tunes on (``epochs_1pct`` or
#: ``epochs_10pct`` of the protocol, which is known once the subset is).
SUBSET_EPOCHS = "epochs"
#: The overrides ``max_steps=N`` / ``max_eval_images=N`` of a smoke run: the run's, not the protocol's.
SMOKE_LIMITS = ("max_steps", "max_eval_images")


@dataclass
class FinetuneArgs:
    """What ``python -m lowssl.semisup finetune`` was asked for (protocol values live in the protocol's YAML)."""

    subset: str  # "1pct", "10pct" or a list file
    dataset: str = "fashion-mnist"
    data_root: str | None = None
    checkpoint: str | Path | None = None
    random_init: bool = False  # the baseline: the same network from random initialisation
    arch: str | None = None
    checkpoint_format: str | None = None
    branch: str | None = None
    trust_checkpoint: bool = False
    new_head: bool = False  # new MLP layers instead of the checkpoint's head
    protocol: str = "paper"
    overrides: list[str] = field(default_factory=list)  # key=value overrides; SUBSET_EPOCHS, SMOKE_LIMITS
    fraction: float | None = None  # which subset a list file is (default: its header or its size)
    expected_count: int | None = None  # accept a list of another size than floor(fraction x N)
    subset_seed: int = 0  # seed of a generated subset
    output_dir: str | None = None
    records_dir: str | None = None
    resume: str = "auto"  # "auto", "never" or a path
    max_steps: int | None = None  # smoke runs: stop after this many optimiser steps in total
    max_eval_images: int | None = None  # smoke runs: evaluate on the first N evaluation images only
    held_out: bool = False  # evaluate on images held out of train (minus the labelled ones), not val
    held_out_per_class: int = PAPER_HELD_OUT_PER_CLASS
    workers: int = field(default_factory=default_workers)
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.random_init == (self.checkpoint is not None):
            raise ConfigError("give either --checkpoint PATH or --random-init --arch ARCH")
        if self.random_init and self.arch is None:
            raise ConfigError("--random-init needs --arch (e.g. resnet18)")
        self._take_smoke_limits()

    def _take_smoke_limits(self) -> None:
        """Move ``max_steps=N`` / ``max_eval_images=N`` out of the overrides into their fields."""
        protocol_overrides = []
        for override in self.overrides:
            key, _, value = override.partition("=")
            if key.strip() not in SMOKE_LIMITS:
                protocol_overrides.append(override)
                continue
            limit = parse_overrides([override])[key.strip()]
            if type(limit) is not int or limit < 1:
                raise ConfigError(f"override '{override}': expected an integer > 0")
            setattr(self, key.strip(), limit)
        self.overrides = protocol_overrides

    def protocol_overrides(self) -> tuple[list[str], str | None]:
        """(the overrides of the protocol's own keys, the value of ``epochs=N`` if given)."""
        own, epochs = [], None
        for override in self.overrides:
            key, _, value = override.partition("=")
            if key.strip() == SUBSET_EPOCHS:
                epochs = value
            else:
                own.append(override)
        return own, epochs

    def recorded_overrides(self) -> dict:
        """The overrides and smoke limits this run sets, as its records list them."""
        limits = {name: getattr(self, name) for name in SMOKE_LIMITS}
        return {**parse_overrides(self.overrides), **{k: v for k, v in limits.items() if v is not None}}

    def run_name(self, subject: Subject) -> str:
        """The run's default folder under runs/semisup/:
        ``<source>[_newhead]_<protocol>_<dataset>_<subset>[_<eval set>]``. The source is ``random_<arch>``,
        or the checkpoint's pre-training run: its folder's name and the file's first 8 SHA-256 digits
        (every pre-training run writes last.pth: two runs' files never share a fine-tuning folder)."""
        if self.random_init:
            source = f"random_{subject.arch}"
        else:
            source = f"{Path(self.checkpoint).resolve().parent.name}-{subject.checkpoint[:8]}"
        subset = self.subset if self.subset in ("1pct", "10pct") else Path(self.subset).stem
        head = "_newhead" if self.new_head else ""
        scored = f"_{self.eval_set()}" if self.held_out else ""
        return re.sub(
            r"[^A-Za-z0-9._-]", "_", f"{source}{head}_{self.protocol}_{self.dataset}_{subset}{scored}"
        )

    def eval_set(self) -> str:
        """The images the run is scored on, as its records and (held-out) folder name it."""
        return f"held-out-{self.held_out_per_class}pc" if self.held_out else "val"
