"""What is evaluated: a checkpoint's backbone, a backbone at its seeded random initialisation
(``--random-init``, optionally with re-estimated BN statistics) or the images themselves
(``--raw-pixels``), built, with where it came from (lowssl.subject) and the run id its records go to."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from lowssl.backbones import build_backbone, get_spec
from lowssl.checkpoints import open_from_arguments
from lowssl.config import ConfigError
from lowssl.evaluate.features import BN_RECALIBRATION_IMAGES
from lowssl.subject import Subject as Provenance


@dataclass(kw_only=True)
class Subject(Provenance):
    """The backbone under evaluation (built) and where it came from (lowssl.subject)."""

    model: nn.Module
    notes: list[str]
    family: str = "cnn"
    feature_dim: int = 0

    @classmethod
    def built(cls, provenance: Provenance, model: nn.Module, notes: list[str], **more) -> Subject:
        """``provenance`` with its backbone built (``more``: family, feature_dim)."""
        return cls(**asdict(provenance), model=model, notes=notes, **more)

    @property
    def identity(self) -> dict:
        return {"checkpoint": self.checkpoint, "arch": self.arch, "branch": self.branch}

    @property
    def short_id(self) -> str:
        return self.checkpoint if self.format in ("random-init", "raw-pixels") else self.checkpoint[:12]

    @property
    def run_id(self) -> str:
        return f"eval-{self.short_id}-{self.arch}-{self.branch}"


def load_subject(args, image_size: int) -> Subject:
    if args.raw_pixels:
        if args.arch is not None:
            raise ConfigError("--raw-pixels evaluates the images themselves: drop --arch")
        return Subject.built(
            Provenance.raw_pixels(),
            nn.Flatten(),
            [f"normalised {image_size}-px centre crops, flattened"],
            feature_dim=3 * image_size**2,
        )
    subject = _load_backbone(args)
    spec = get_spec(subject.arch)
    subject.family, subject.feature_dim = spec.family, spec.feature_dim
    return subject


def _load_backbone(args) -> Subject:
    if args.recalibrate_bn and not args.random_init:
        raise ConfigError("--recalibrate-bn is for --random-init (a trained backbone has its own statistics)")
    if args.random_init:
        if args.arch is None:
            raise ConfigError("--random-init needs --arch (the backbone to initialise)")
        torch.manual_seed(args.seed)
        # The floor with re-estimated BN statistics is another subject: its own id, method and cache.
        bn = f"-bn{BN_RECALIBRATION_IMAGES}" if args.recalibrate_bn else ""
        provenance = Provenance.random_init(
            args.arch, args.seed, f"random-init-seed{args.seed}{bn}", f"random-init{'-bn' if bn else ''}"
        )
        return Subject.built(
            provenance, build_backbone(args.arch), [f"random initialisation, torch seed {args.seed}"]
        )
    opened = open_from_arguments(args)
    return Subject.built(
        Provenance.of_checkpoint(opened),
        opened.build_backbone(),
        [*opened.notes, f"{opened.loaded} backbone keys loaded, {len(opened.unexpected)} unexpected"],
    )
