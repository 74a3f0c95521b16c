"""Which lowssl backbones detection trains: those with a registered Detectron2 builder (MobileNetV2's in
detection/backbones.py, Detectron2's own ResNet at depth 18 and 34) and a config per architecture.

Importing this module imports no Detectron2 (nor does ``import lowssl.detection``), so other stages
can ask which architectures detection takes without loading it.
"""

from __future__ import annotations

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

#: The config whose model ``convert`` loads a converted checkpoint into, per lowssl backbone.
ARCH_CONFIGS = {
    "mobilenet_v2": CONFIG_DIR / "mask_rcnn_mobilenet_v2_fpn_1x.yaml",
    "resnet18": CONFIG_DIR / "mask_rcnn_resnet18_fpn_1x.yaml",
    "resnet34": CONFIG_DIR / "mask_rcnn_resnet34_fpn_1x.yaml",
}


def architectures() -> tuple[str, ...]:
    """The lowssl backbone names (lowssl.backbones) detection builds, converts and trains."""
    return tuple(ARCH_CONFIGS)
