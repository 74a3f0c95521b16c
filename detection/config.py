"""Detectron2 configs for lowssl: the extra keys, loading a YAML under ``detection/configs/``, and which
lowssl backbone a config builds (those detection takes: detection/archs.py)."""

from __future__ import annotations

from pathlib import Path

import yaml
from detectron2.config import CfgNode, get_cfg

import lowssl.detection.backbones  # noqa: F401 - registers the MobileNetV2 builders the configs name
from lowssl.config import ConfigError, yaml_file_error
from lowssl.detection.archs import CONFIG_DIR


def add_lowssl_config(cfg: CfgNode) -> None:
    cfg.MODEL.MOBILENET_V2 = CfgNode({"NORM": "BN"})
    cfg.LOWSSL = CfgNode()
    # Names the results metrics coco_<SCHEDULE>_APbb ...: "1x", "2x" or "tiny".
    cfg.LOWSSL.SCHEDULE = ""
    # Check every annotation file of DATASETS.TRAIN / TEST before training (detection/datasets.py).
    cfg.LOWSSL.VALIDATE_DATASETS = True
    # The embedded Fashion-MNIST instance-segmentation set (detection/fmnist_det.py); ROOT "" is
    # data/fmnist_det/<parameters> under $LOWSSL_HOME or the working directory, generated on first use.
    cfg.LOWSSL.FMNIST_DET = CfgNode(
        {"ROOT": "", "TRAIN_IMAGES": 1000, "VAL_IMAGES": 200, "SEED": 0, "CANVAS": 128}
    )


#: How yacs refuses a config: an unknown key (KeyError), a value of the wrong type or text that is not
#: UTF-8 (ValueError), KEY VALUE not in pairs or a section replaced by a value (AssertionError).
YACS_REFUSALS = (KeyError, ValueError, AssertionError)


def _reason(error: Exception) -> str:
    """The message of a yacs refusal (``str()`` of a KeyError would quote it)."""
    return error.args[0] if isinstance(error, KeyError) and error.args else str(error)


def load_config(path: str | Path, opts: list[str] | tuple[str, ...] = ()) -> CfgNode:
    """The config at ``path`` (its ``_BASE_`` chain merged) with ``KEY VALUE`` overrides applied.

    On the CPU every SyncBN becomes BN: there is nothing to synchronise with (docs/detection.md,
    "Base config").
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"detection config {path} does not exist; configs live in {CONFIG_DIR}")
    cfg = get_cfg()
    add_lowssl_config(cfg)
    try:
        # Detectron2's default (allow_unsafe=True) retries a file that safe_load refuses with
        # yaml.unsafe_load, which runs the Python a tag names: refused here, in every file of the chain.
        cfg.merge_from_file(str(path), allow_unsafe=False)
    except yaml.YAMLError as error:
        raise yaml_file_error(error, path) from None
    except YACS_REFUSALS as error:
        raise ConfigError(f"detection config {path}: {_reason(error)}") from None
    try:
        cfg.merge_from_list(list(opts))
    except YACS_REFUSALS as error:
        raise ConfigError(f"detection overrides '{' '.join(opts)}': {_reason(error)}") from None
    if cfg.MODEL.DEVICE == "cpu":
        _replace_norm(cfg, "SyncBN", "BN")
    return cfg


def _replace_norm(node: CfgNode, old: str, new: str) -> None:
    for key, value in node.items():
        if isinstance(value, CfgNode):
            _replace_norm(value, old, new)
        elif key == "NORM" and value == old:
            node[key] = new


def config_arch(cfg: CfgNode) -> str:
    """The lowssl backbone name (lowssl.backbones) of the config's bottom-up network."""
    name = cfg.MODEL.BACKBONE.NAME
    if name in ("build_mobilenet_v2_fpn_backbone", "build_mobilenet_v2_backbone"):
        return "mobilenet_v2"
    if name == "build_resnet_fpn_backbone":
        return f"resnet{cfg.MODEL.RESNETS.DEPTH}"
    raise ConfigError(f"MODEL.BACKBONE.NAME {name} is not a lowssl detection backbone")
