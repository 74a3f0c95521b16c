"""MobileNetV2 in Detectron2's backbone registry (ResNet18/34 use Detectron2's own ResNet builders).

The bottom-up network is torchvision's ``mobilenet_v2().features`` itself, kept as one module, so its
parameters are named ``features.N...`` exactly as in torchvision and in every MobileNetV2 checkpoint
(docs/checkpoints.md, "Name mapping"): converting a checkpoint is a prefix change that Detectron2's
name matching does. Stages are cut after the last block of each stride (docs/detection.md,
"MobileNetV2 backbone and FPN") and are named by their stride; the FPN names its outputs
``p<log2 stride>`` from those strides.
"""

from __future__ import annotations

import torchvision
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool
from torch import nn

# Stage name -> (index in ``features`` of its last block, stride, channels). A new stage starts at each
# stride-2 block: features[2] (stride 4), [4] (8), [7] (16), [14] (32); features[11..13] widen 64 -> 96
# at stride 16 and features[18] is the final 1x1 conv to 1280 channels (docs/detection.md,
# "MobileNetV2 backbone and FPN").
MOBILENET_V2_STAGES: dict[str, tuple[int, int, int]] = {
    "stride2": (1, 2, 16),
    "stride4": (3, 4, 24),
    "stride8": (6, 8, 32),
    "stride16": (13, 16, 96),
    "stride32": (18, 32, 1280),
}


class MobileNetV2(Backbone):
    """torchvision's MobileNetV2 ``features`` returning the output of every stage."""

    def __init__(self, norm: str = "BN", freeze_at: int = 0) -> None:
        super().__init__()
        self.features = torchvision.models.mobilenet_v2(
            weights=None, norm_layer=lambda channels: get_norm(norm, channels)
        ).features
        self._stage_ends = {end: name for name, (end, _, _) in MOBILENET_V2_STAGES.items()}
        self._out_features = list(MOBILENET_V2_STAGES)
        self._out_feature_strides = {name: stride for name, (_, stride, _) in MOBILENET_V2_STAGES.items()}
        self._out_feature_channels = {
            name: channels for name, (_, _, channels) in MOBILENET_V2_STAGES.items()
        }
        self.freeze(freeze_at)

    def freeze(self, freeze_at: int) -> None:
        """Detectron2's FREEZE_AT: 0 trains everything (the paper), k >= 1 freezes the first k stages.

        k past the last stage (5) freezes the whole network, as the authors' MobileNet backbone
        (saic-fi/SSLight:detection/backbones/mobilenet.py) and Detectron2's ResNet do.
        """
        if freeze_at <= 0:
            return
        stages = list(MOBILENET_V2_STAGES.values())
        last_frozen = stages[min(freeze_at, len(stages)) - 1][0]
        for index in range(last_frozen + 1):
            block = FrozenBatchNorm2d.convert_frozen_batchnorm(self.features[index])
            for parameter in block.parameters():
                parameter.requires_grad = False
            self.features[index] = block

    def forward(self, x):
        outputs = {}
        for index, block in enumerate(self.features):
            x = block(x)
            if index in self._stage_ends:
                outputs[self._stage_ends[index]] = x
        return outputs


@BACKBONE_REGISTRY.register()
def build_mobilenet_v2_backbone(cfg, input_shape: ShapeSpec) -> Backbone:
    if input_shape.channels != 3:
        raise ValueError(f"MobileNetV2 takes 3-channel images, the config gives {input_shape.channels}")
    return MobileNetV2(cfg.MODEL.MOBILENET_V2.NORM, cfg.MODEL.BACKBONE.FREEZE_AT)


@BACKBONE_REGISTRY.register()
def build_mobilenet_v2_fpn_backbone(cfg, input_shape: ShapeSpec) -> nn.Module:
    """FPN on the stages in MODEL.FPN.IN_FEATURES plus a max-pooled level on top.

    The authors' design (the configs' default; docs/detection.md, "MobileNetV2 backbone and FPN") is
    ["stride16", "stride32"] -> P4, P5 and a max-pooled P6; ["stride4", "stride8", "stride16",
    "stride32"] gives the usual P2-P6.
    """
    return FPN(
        bottom_up=build_mobilenet_v2_backbone(cfg, input_shape),
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
