"""A backbone out of any checkpoint lowssl reads, in a format every other tool loads.

- ``torchvision``: a plain state dict (``torch.save``) for ``torchvision.models.<arch>()``, loaded with
  ``strict=False`` (only the classifier, ``fc.*`` / ``classifier.*``, is absent);
- ``timm``: the same for ``timm.create_model(<arch>, num_classes=0)`` (strict);
- ``safetensors``: the backbone's tensors under the same names, with what they are in its metadata.

:func:`load_backbone` is the Python entry point (also ``hubconf.py``'s): a path, or the name of a
released checkpoint (``lowssl/released.yaml``), to a ready backbone.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lowssl.backbones import build_backbone, get_spec
from lowssl.checkpoints import OpenedCheckpoint, open_checkpoint
from lowssl.checkpoints.formats import CheckpointLayoutError
from lowssl.io import atomic_torch_save, atomic_write

TARGETS = ("torchvision", "timm", "safetensors")
# timm's ResNets name their layers as torchvision does (conv1, bn1, layer1..4); its MobileNetV2
# (conv_stem, blocks.*) does not, so that one has no timm export here.
TIMM_NAMES = {"resnet18": "resnet18", "resnet34": "resnet34", "resnet50": "resnet50"}


def _checked(opened: OpenedCheckpoint) -> dict[str, torch.Tensor]:
    """The backbone's tensors, refused unless they are exactly the weights of ``opened.arch``."""
    opened.require_loadable()
    return {key: tensor.detach().clone().contiguous() for key, tensor in opened.state_dict.items()}


def export_backbone(opened: OpenedCheckpoint, target: str, out: str | Path) -> Path:
    """Write ``opened``'s backbone to ``out`` for ``target`` (one of :data:`TARGETS`)."""
    if target not in TARGETS:
        raise ValueError(f"unknown export target {target!r}: one of {', '.join(TARGETS)}")
    family = get_spec(opened.arch).family
    if target == "torchvision" and family != "cnn":
        raise CheckpointLayoutError(f"{opened.arch} is a timm model: export it --to timm or safetensors")
    if target == "timm" and family == "cnn" and opened.arch not in TIMM_NAMES:
        raise CheckpointLayoutError(
            f"timm's {opened.arch} names its layers differently from torchvision's: export it --to torchvision"
        )
    state = _checked(opened)
    out = Path(out)
    if target == "safetensors":
        from safetensors.torch import save

        metadata = {"arch": opened.arch, "format": opened.format, "branch": opened.branch}
        metadata["source"] = str(opened.path)
        atomic_write(out, lambda file: file.write(save(state, metadata=metadata)))
    else:
        atomic_torch_save(state, out)
    return out


def target_model(arch: str, target: str) -> nn.Module:
    """The other tool's own model an export for ``target`` loads into (what the round-trip tests use)."""
    if target == "timm":
        import timm

        return timm.create_model(TIMM_NAMES.get(arch, arch), pretrained=False, num_classes=0)
    import torchvision

    return getattr(torchvision.models, arch)(weights=None)


def load_backbone(
    path_or_name: str | Path,
    arch: str | None = None,
    branch: str | None = None,
    fmt: str | None = None,
    trust: bool = False,
) -> nn.Module:
    """A lowssl backbone (pooled features, eval mode) from a checkpoint file of any supported format,
    or from a released checkpoint's name (downloaded once into the cache, see docs/released.md)."""
    path = Path(path_or_name)
    if not path.exists() and path.suffix == "" and len(path.parts) == 1:
        from lowssl import released

        entry = released.resolve(str(path_or_name))
        path = released.fetch(entry.name, trust=trust)
        arch, branch, fmt = arch or entry.arch, branch or entry.branch, fmt or entry.format
    opened = open_checkpoint(path, fmt=fmt, branch=branch, arch=arch, trust=trust)
    model = build_backbone(opened.arch)
    model.load_state_dict(_checked(opened))
    return model.eval()
