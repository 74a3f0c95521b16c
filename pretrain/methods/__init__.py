"""Multi-crop SSL methods (DINO, SwAV, MoCo-v2*) with the paper's loss re-balancing (Eq. 3).

``build_method(name, backbone_name, cfg)`` builds one; see :mod:`pretrain.methods.base` for the
per-step calling sequence.
"""

from __future__ import annotations

from lowssl.backbones import build_backbone, get_spec
from lowssl.config import ConfigError

from .base import MethodOutput, MultiCropMethod, RunLayout, multicrop_forward
from .dino import DINO, DinoConfig
from .moco import MoCo, MocoConfig
from .rebalance import check_alpha, effective_alpha, rebalance
from .swav import SwAV, SwavConfig

METHODS: dict[str, type[MultiCropMethod]] = {cls.name: cls for cls in (DINO, SwAV, MoCo)}

MethodConfig = DinoConfig | SwavConfig | MocoConfig


def build_method(
    name: str,
    backbone_name: str,
    cfg: MethodConfig | None = None,
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
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; allowed values: {', '.join(sorted(METHODS))}")
    cls = METHODS[name]
    cfg = cfg if cfg is not None else cls.config_class()
    if not isinstance(cfg, cls.config_class):
        raise TypeError(f"method {name!r} takes a {cls.config_class.__name__}, got {type(cfg).__name__}")
    spec = get_spec(backbone_name)
    return cls(build_backbone(backbone_name, drop_path_rate), spec.feature_dim, spec.family, cfg, layout)


__all__ = [
    "DINO",
    "METHODS",
    "DinoConfig",
    "MethodConfig",
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
    "multicrop_forward",
    "rebalance",
]
