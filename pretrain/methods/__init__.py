"""Multi-crop SSL methods (DINO, SwAV, MoCo-v2*) with the paper's loss re-balancing (Eq. 3).

Every method is registered below (:mod:`pretrain.methods.registry`) under its config's
``method.name``; ``build_method(name, backbone_name, cfg)`` builds one; see
:mod:`pretrain.methods.base` for the per-step calling sequence and docs/extending.md for adding one.
"""

from __future__ import annotations

from lowssl.backbones import build_backbone, get_spec

from .base import MethodOutput, MultiCropMethod, RunLayout, multicrop_forward
from .dino import DINO, DinoConfig
from .moco import MoCo, MocoConfig
from .rebalance import check_alpha, effective_alpha, rebalance
from .registry import MethodEntry, get_method, method_name, methods, register_method
from .swav import SwAV, SwavConfig

register_method(DINO, smoke_values={"hidden_dim": 64, "out_dim": 128, "bottleneck_dim": 32})
register_method(SwAV, smoke_values={"hidden_dim": 64, "out_dim": 32, "n_prototypes": 16, "queue_length": 32})
register_method(MoCo, smoke_values={"hidden_dim": 64, "out_dim": 32, "queue_length": 64})


def build_method(
    name: str,
    backbone_name: str,
    cfg=None,
    *,
    drop_path_rate: float = 0.0,
    layout: RunLayout | None = None,
) -> MultiCropMethod:
    """Method ``name`` on a freshly initialised ``backbone_name``; ``cfg`` None = the method's defaults.

    ``drop_path_rate`` is the student ViT's stochastic depth (lowssl.backbones.build_backbone);
    ``layout`` (None: this process group, batch unknown) sizes per-process state such as SwAV's queue.
    Family-dependent defaults (DINO's head and teacher-temperature warm-up) come from the backbone's
    family, the queue SwAV keeps from the layout; the resolved config is ``method.cfg``.
    """
    entry = get_method(name)
    cfg = cfg if cfg is not None else entry.config_class()
    if not isinstance(cfg, entry.config_class):
        raise TypeError(f"method {name!r} takes a {entry.config_class.__name__}, got {type(cfg).__name__}")
    spec = get_spec(backbone_name)
    return entry.method_class(
        build_backbone(backbone_name, drop_path_rate), spec.feature_dim, spec.family, cfg, layout
    )


__all__ = [
    "DINO",
    "DinoConfig",
    "MethodEntry",
    "MethodOutput",
    "MoCo",
    "MocoConfig",
    "MultiCropMethod",
    "RunLayout",
    "SwAV",
    "SwavConfig",
    "build_method",
    "check_alpha",
    "effective_alpha",
    "get_method",
    "method_name",
    "methods",
    "multicrop_forward",
    "rebalance",
    "register_method",
]
