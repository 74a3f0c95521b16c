"""``python -m lowssl.detection convert``: any checkpoint lowssl.checkpoints reads -> Detectron2's weight pickle.

The pickle is what Detectron2 loads with name-matching heuristics: ``{"model": {name: numpy array},
"__author__": "lowssl", "matching_heuristics": True}`` (MoCo's convert-pretrain-to-detectron2
convention; docs/detection.md, "Converting checkpoints"), plus ``"lowssl"``: where the weights came from
(the path given and lowssl.subject.Subject.to_payload, pre-training budget included: detection train
records it).
Names are backbone names without a model prefix; Detectron2 matches each to the model key it is a
suffix of (``res2.0.conv1.weight`` -> ``backbone.bottom_up.res2.0.conv1.weight``).

The conversion is checked before anything is written: the checkpoint's backbone must be exactly the
architecture's (``OpenedCheckpoint.require_loadable``: no key missing, none of another architecture or
shape, no NaN / inf), and the pickle is loaded into the Mask R-CNN the architecture's config builds,
with Detectron2's own checkpointer, where any backbone key left missing, any weight left unused or of
the wrong shape is an error.
"""

from __future__ import annotations

import pickle
import re
from dataclasses import dataclass
from pathlib import Path

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from lowssl.checkpoints import open_checkpoint
from lowssl.detection.archs import ARCH_CONFIGS
from lowssl.detection.config import load_config
from lowssl.errors import BadInput
from lowssl.io import atomic_write
from lowssl.subject import Subject

AUTHOR = "lowssl"
BACKBONE_PREFIX = "backbone.bottom_up."  # where FPN keeps the bottom-up network in Detectron2's model


class ConversionError(BadInput, ValueError):
    """The checkpoint cannot become Detectron2 weights that load completely."""


def resnet_to_detectron2(name: str) -> str:
    """torchvision ResNet name -> Detectron2 ResNet name, as MoCo's convert-pretrain-to-detectron2.py."""
    if not name.startswith("layer"):
        name = "stem." + name  # conv1, bn1
    name = re.sub(r"layer(\d)", lambda match: f"res{int(match.group(1)) + 1}", name)
    name = re.sub(r"bn(\d)", r"conv\1.norm", name)
    return name.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")


def detectron2_name(arch: str, name: str) -> str:
    # MobileNetV2's registered backbone keeps torchvision's features.N names (detection/backbones.py).
    return resnet_to_detectron2(name) if arch.startswith("resnet") else name


@dataclass
class Converted:
    payload: dict  # what the pickle holds
    loaded: int  # backbone tensors the model took from it
    notes: list[str]


def convert_checkpoint(
    checkpoint: str | Path,
    fmt: str | None = None,
    arch: str | None = None,
    branch: str | None = None,
    trust: bool = False,
) -> Converted:
    opened = open_checkpoint(checkpoint, fmt=fmt, branch=branch, arch=arch, trust=trust)
    if opened.arch not in ARCH_CONFIGS:
        raise ConversionError(
            f"{checkpoint} holds a {opened.arch}; detection has configs for {', '.join(ARCH_CONFIGS)}"
        )
    opened.require_loadable()  # another architecture's weights, missing keys, NaN / inf: refused
    payload = {
        "model": {
            detectron2_name(opened.arch, name): tensor.detach().cpu().numpy()
            for name, tensor in opened.state_dict.items()
        },
        "__author__": AUTHOR,
        "matching_heuristics": True,
        "lowssl": {"source": str(checkpoint), **Subject.of_checkpoint(opened).to_payload()},
    }
    loaded = check_loads(payload, opened.arch)
    return Converted(payload, loaded, opened.notes)


def check_loads(payload: dict, arch: str) -> int:
    """Load ``payload`` into the Mask R-CNN of ``arch`` on the CPU the way training will; the number of
    backbone tensors loaded, or :class:`ConversionError` naming what did not load."""
    model = build_model(load_config(ARCH_CONFIGS[arch], ["MODEL.DEVICE", "cpu"]))
    checkpointer = DetectionCheckpointer(model)
    # _load_model is the checkpointer's own loading step (name matching included); its report is
    # otherwise only logged. It replaces the arrays of the dict it gets by tensors, so it gets a copy.
    incompatible = checkpointer._load_model({**payload, "model": dict(payload["model"])})
    backbone_keys = [key for key in model.state_dict() if key.startswith(BACKBONE_PREFIX)]
    missing = [key for key in incompatible.missing_keys if key.startswith(BACKBONE_PREFIX)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} backbone keys missing: {', '.join(missing[:10])}")
    if incompatible.unexpected_keys:
        problems.append(
            f"{len(incompatible.unexpected_keys)} weights match no model key (or have another shape): "
            f"{', '.join(incompatible.unexpected_keys[:10])}"
        )
    if incompatible.incorrect_shapes:
        problems.append(f"wrong shapes: {incompatible.incorrect_shapes[:10]}")
    if problems:
        raise ConversionError(
            f"the converted {arch} weights do not load into the detector: {'; '.join(problems)}"
        )
    return len(backbone_keys)


def write_pickle(payload: dict, out: str | Path) -> Path:
    return atomic_write(out, lambda file: pickle.dump(payload, file, protocol=pickle.HIGHEST_PROTOCOL))
