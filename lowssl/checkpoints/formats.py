"""Third-party checkpoint layouts, one declarative :class:`CheckpointFormat` each (docs/checkpoints.md).

A format says which top-level key holds the state dict, the key prefix of the backbone in each branch
(student / teacher, query encoder ...), and the key prefixes it knows are not backbone (heads, queues,
other encoders). :mod:`lowssl.checkpoints.reader` maps keys by these rules, by NAME, never by
position. Registration order is tie order when two formats read a file equally well (see
:func:`lowssl.checkpoints.reader.detect_format`).
"""

from __future__ import annotations

import argparse
import collections
from collections.abc import Callable
from dataclasses import dataclass

from lowssl.checkpoints import schema
from lowssl.io import CheckpointError
from lowssl.registry import Registry


class CheckpointLayoutError(CheckpointError, ValueError):
    """The layout, branch or architecture of a checkpoint could not be determined, or its backbone
    tensors are not exactly the architecture's (keys missing, extra or of another shape; NaN / inf)."""


# The non-tensor classes that known formats pickle (docs/checkpoints.md, "Safe loading"), allowed
# under weights_only:
# - argparse.Namespace: SimReg / CompRess ``opt`` and DINO ``args``; torch rebuilds it with
#   ``Namespace.__new__`` and fills ``__dict__``, so no code of the file runs.
# - CfgNode: SSLight ``config``. Its released trainer builds it with fvcore's CfgNode
#   (saic-fi/SSLight@0b94aeb:src/config/defaults.py imports fvcore.common.config.CfgNode), older code
#   and other projects with yacs' or Detectron2's subclass. Allow-listing a class itself is not enough:
#   CfgNode subclasses dict, and torch's weights-only unpickler only fills exact dict / OrderedDict /
#   Counter types ("Can only SETITEMS for dict ..."). Each of these pickled names is therefore rebuilt as
#   a plain OrderedDict (nested nodes too; the node's private flags land in the OrderedDict's
#   ``__dict__``): neither yacs, fvcore nor Detectron2 is imported or run, and the config reads as
#   nested mappings. What a node holds is still checked value by value: anything but tensors and
#   plain data inside it is refused as before.
CFG_NODE_CLASSES = ("yacs.config.CfgNode", "fvcore.common.config.CfgNode", "detectron2.config.config.CfgNode")
SAFE_GLOBALS: list = [argparse.Namespace, *((collections.OrderedDict, name) for name in CFG_NODE_CLASSES)]


@dataclass(frozen=True)
class Branch:
    """One network of a checkpoint (student, teacher, query encoder ...)."""

    container: str | None  # top-level key of the state dict that holds it; None: the file is the state dict
    prefixes: tuple[str, ...]  # backbone key prefixes; the longest one a key starts with is stripped
    heads: tuple[tuple[str, str], ...] = ()  # (container, prefix) of its projection MLP; first found wins


@dataclass(frozen=True)
class CheckpointFormat:
    name: str
    source: str  # who writes this layout
    branches: dict[str, Branch]
    default_branch: str
    drop: tuple[str, ...] = ()  # key prefixes known not to be backbone: heads, queues, other encoders
    families: tuple[str, ...] = ("cnn",)  # backbone families (lowssl.backbones) the layout holds
    arch_field: tuple[str, ...] = ()  # where the file records its architecture name, if it does
    rename: Callable[[list[str]], dict[str, str]] | None = None  # stripped names -> torchvision names
    remark: str = ""  # what a reader of the report should know: why this default branch, ...


FORMATS: Registry[CheckpointFormat] = Registry("checkpoint format")


def register_format(fmt: CheckpointFormat) -> CheckpointFormat:
    if fmt.default_branch not in fmt.branches:
        raise ValueError(f"format '{fmt.name}': default branch '{fmt.default_branch}' is not a branch")
    return FORMATS.register(fmt.name, fmt)


def formats() -> list[CheckpointFormat]:
    """Registered formats in registration order, which is also the order ties resolve in."""
    return [fmt for _, fmt in FORMATS.items()]


def get_format(name: str) -> CheckpointFormat:
    if name not in FORMATS:  # a layout error, as every other way a checkpoint's layout is unreadable
        raise CheckpointLayoutError(FORMATS.unknown(name))
    return FORMATS.get(name)


# SSLight's ResNet encoder is nn.Sequential(*torchvision_resnet.children()[:-2]) (docs/checkpoints.md,
# "Name mapping"):
# children conv1, bn1, relu, maxpool, layer1..layer4, so only these indices hold parameters.
SSLIGHT_RESNET_CHILDREN = {
    "0": "conv1",
    "1": "bn1",
    "4": "layer1",
    "5": "layer2",
    "6": "layer3",
    "7": "layer4",
}


def _sslight_to_torchvision(keys: list[str]) -> dict[str, str]:
    """SSLight ``encoder.N...`` -> MobileNetV2 ``features.N...`` or ResNet children by name.

    A ResNet's stem conv is child 0 itself (``0.weight``); MobileNetV2's is a Conv-BN-ReLU at
    ``0.0``. ViT keys carry no ``encoder.`` and no index: they are timm names already.
    """
    is_resnet = "0.weight" in keys
    renamed = {}
    for key in keys:
        index, _, rest = key.partition(".")
        if not index.isdigit():
            renamed[key] = key
        elif is_resnet:  # an index outside the table stays as it is and is reported unexpected
            renamed[key] = f"{SSLIGHT_RESNET_CHILDREN.get(index, index)}.{rest}"
        else:
            renamed[key] = f"features.{key}"
    return renamed


CNN_AND_VIT = ("cnn", "vit")

# One entry per third-party layout of docs/checkpoints.md, plus lowssl's own format and plain
# torchvision / timm files.
# Registration order is tie order: specific layouts first, then the MoCo family led by plain MoCo,
# then flat files led by torchvision / timm (DINO's backbone-only files are the same layout).
register_format(
    CheckpointFormat(
        name="lowssl",
        source=f"lowssl pretrain (lowssl/checkpoints/schema.py, format '{schema.FORMAT}')",
        branches={
            "student": Branch(
                "student_backbone",
                ("",),
                heads=(("method_state", "student_head."), ("method_state", "projection_head.")),
            ),
            "teacher": Branch("teacher_backbone", ("",), heads=(("method_state", "teacher_head."),)),
        },
        default_branch="student",
        families=CNN_AND_VIT,
        arch_field=("backbone",),
        remark="default branch student: the paper evaluates the student downstream "
        "(docs/recipes.md, 'Paper vs SSLight')",
    )
)
register_format(
    CheckpointFormat(
        name="sslight",
        source="SSLight, the paper authors' code (saic-fi/SSLight): DINO, SwAV and MoCo pre-training",
        branches={
            "student": Branch(
                "state_dict",
                (
                    "module.student.backbone.encoder.",  # DINO CNN
                    "module.student.backbone.",  # DINO ViT (no .encoder)
                    "module.network.backbone.encoder.",  # SwAV
                    "module.encoder_q.backbone.encoder.",  # MoCo
                ),
                heads=(
                    ("state_dict", "module.student.head."),
                    ("state_dict", "module.network.head.projection."),
                    ("state_dict", "module.encoder_q.head."),
                ),
            ),
            "teacher": Branch(
                "state_dict",
                ("module.teacher.backbone.encoder.", "module.teacher.backbone."),
                heads=(("state_dict", "module.teacher.head."),),
            ),
        },
        default_branch="student",
        drop=(
            "module.student.head.",
            "module.teacher.head.",
            "module.network.head.",
            "module.encoder_q.head.",
            "module.encoder_k.",
            "module.classifier.",
            "module.queue",
        ),
        families=CNN_AND_VIT,
        arch_field=("config", "MODEL", "BACKBONE_ARCH"),
        rename=_sslight_to_torchvision,
        remark="default branch student, as the authors evaluate it; a teacher exists in DINO files only",
    )
)
register_format(
    CheckpointFormat(
        name="dino-full",
        source="DINO training checkpoint (facebookresearch/dino checkpoint.pth)",
        branches={
            "teacher": Branch(
                "teacher",
                ("module.backbone.", "backbone."),
                heads=(("teacher", "module.head."), ("teacher", "head.")),
            ),
            "student": Branch("student", ("module.backbone.",), heads=(("student", "module.head."),)),
        },
        default_branch="teacher",
        drop=("module.head.", "head."),
        families=CNN_AND_VIT,
        arch_field=("args", "arch"),
        remark="default branch teacher: DINO's own evaluation scripts load --checkpoint_key teacher "
        "(the ViT teacher is not DDP-wrapped, hence 'backbone.' without 'module.')",
    )
)
register_format(
    CheckpointFormat(
        name="moco",
        source="MoCo v1/v2 (facebookresearch/moco); the generic reading of the module.encoder_q. family",
        branches={"query": Branch("state_dict", ("module.encoder_q.",))},
        default_branch="query",
        drop=("module.encoder_q.fc.", "module.encoder_k.", "module.queue"),
        arch_field=("arch",),
    )
)
register_format(
    CheckpointFormat(
        name="swav",
        source="SwAV (facebookresearch/swav)",
        branches={"backbone": Branch(None, ("module.",))},
        default_branch="backbone",
        drop=("module.projection_head.", "module.prototypes."),
    )
)
register_format(
    CheckpointFormat(
        name="simreg",
        source="SimReg distillation (UCDvision/simreg)",
        branches={"student": Branch("state_dict", ("encoder_q.module.",))},
        default_branch="student",
        drop=("predict_q.", "encoder_t."),
    )
)
register_format(
    CheckpointFormat(
        name="compress",
        source="CompRess distillation (UMBCvision/CompRess)",
        branches={"student": Branch("model", ("module.",))},
        default_branch="student",
    )
)
register_format(
    CheckpointFormat(
        name="seed",
        source="SEED distillation (jacobswan1/SEED); some loaders expect module.encoder_q.: both are read",
        branches={"student": Branch("state_dict", ("module.student.", "module.encoder_q."))},
        default_branch="student",
        drop=("module.student.fc.", "module.encoder_q.fc.", "module.teacher.", "module.queue"),
        arch_field=("arch",),
    )
)
register_format(
    CheckpointFormat(
        name="disco",
        source="DisCo distillation (Yuting-Gao/DisCo-pytorch)",
        branches={"query": Branch("state_dict", ("module.encoder_q.",))},
        default_branch="query",
        drop=("module.encoder_q.fc.", "module.encoder_k.", "module.teacher_encoder_", "module.queue"),
        arch_field=("arch",),
    )
)
register_format(
    CheckpointFormat(
        name="bingo",
        source="BINGO distillation (no released files; layout: docs/checkpoints.md, 'BINGO')",
        branches={
            "query": Branch("state_dict", ("module.encoder_q.",)),
            "teacher": Branch("state_dict", ("module.encoder_k.",)),
        },
        default_branch="query",
        drop=("module.encoder_q.fc.", "module.encoder_k.fc."),
        remark="encoder_k is the teacher (branch 'teacher'); the student is the query encoder",
    )
)
register_format(
    CheckpointFormat(
        name="torchvision",
        source="plain torchvision state dict (classifier fc / classifier dropped)",
        branches={"backbone": Branch(None, ("",))},
        default_branch="backbone",
        drop=("fc.", "classifier."),
    )
)
register_format(
    CheckpointFormat(
        name="timm",
        source="plain timm ViT state dict (classifier head dropped)",
        branches={"backbone": Branch(None, ("",))},
        default_branch="backbone",
        drop=("head.",),
        families=("vit",),
    )
)
register_format(
    CheckpointFormat(
        name="dino-backbone",
        source="DINO backbone-only release (dino_*_pretrain.pth): torchvision / timm names, no head",
        branches={"backbone": Branch(None, ("",))},
        default_branch="backbone",
        families=CNN_AND_VIT,
    )
)
