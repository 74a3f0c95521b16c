"""Named protocols, and whether a run still measures one: the one loader and the one decision.

A protocol is a YAML file under a stage's ``configs/`` (evaluate's linear and k-NN probes, semisup's
fine-tuning) read strictly into the stage's dataclass; Detectron2 configs are detection's protocols.
Numbers are comparable only under the same protocol (docs/protocols.md, "Named protocols"), so a run
whose values differ from its protocol's own is another protocol: it is recorded under a derived name
(``sslight+epochs=1``) and never as the paper's (:func:`protocol_identity`). The linear scaling rule
of the learning rate, shared by the protocols that scale it, lives here too (:func:`scaled_lr`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from lowssl.config import ConfigError, apply_overrides, changed_values, derived_name, from_dict, read_yaml
from lowssl.registry import Registry

P = TypeVar("P")

#: The batch size the linear scaling rule refers to: lr = base_lr * batch_size / 256.
LR_REFERENCE_BATCH = 256


def scaled_lr(base_lr: float, batch_size: int, scaling: bool) -> float:
    """The peak learning rate: ``base_lr * batch_size / 256`` under the linear scaling rule, else
    ``base_lr`` as it is."""
    return base_lr * batch_size / LR_REFERENCE_BATCH if scaling else base_lr


def protocol_identity(name: str, paper_protocol: bool, changes: Mapping[str, Any]) -> tuple[str, bool]:
    """The protocol name a run of ``name`` is recorded under, and whether it is still the paper's:
    ``name`` as it is without ``changes`` (dotted key -> the run's value); with any, the derived name
    (:func:`lowssl.config.derived_name`) and never the paper's."""
    return derived_name(name, dict(changes)), paper_protocol and not changes


def available(config_dir: Path, kind: str | None = None) -> list[str]:
    """Names of the protocols under ``config_dir``; with ``kind``, those whose ``kind`` key is it."""
    paths = config_dir.glob("*.yaml")
    return sorted(path.stem for path in paths if kind is None or read_yaml(path).get("kind") == kind)


def load_protocol(
    config_dir: Path,
    name: str,
    protocol_class: type[P],
    overrides: list[str] | None = None,
    *,
    kind: str | None = None,
    what: str | None = None,
    derive: bool = True,
) -> P:
    """The protocol ``name`` (``config_dir/<name>.yaml``, of ``kind`` if given) as a ``protocol_class``,
    with ``key=value`` overrides applied; unknown keys, wrong types and a ``name`` that is not the
    file's are errors. ``what`` names the protocols in the error for an unknown name (default
    "<kind> protocol"). Overrides that change its values make another protocol: its name is derived
    and ``paper_protocol`` false (:func:`protocol_identity`), unless ``derive`` is false, for a stage
    that decides that when it records the run."""
    names: Registry[Path] = Registry(what or " ".join(filter(None, (kind, "protocol"))))
    for known in available(config_dir, kind):
        names.register(known, config_dir / f"{known}.yaml")
    path = names.get(name)
    data = apply_overrides(read_yaml(path), overrides or [])
    if data.get("name") != name:
        raise ConfigError(f"config key 'name': protocol file {path.name} must keep name '{name}'")
    protocol = from_dict(protocol_class, data)
    changes = changed_values(from_dict(protocol_class, read_yaml(path)), protocol) if derive else {}
    if not changes:
        return protocol
    derived, paper = protocol_identity(name, protocol.paper_protocol, changes)
    return dataclasses.replace(protocol, name=derived, paper_protocol=paper)
