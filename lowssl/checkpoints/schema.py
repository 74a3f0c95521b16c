"""lowssl's own pre-training checkpoints: what they hold, the one writer, the one reader.

A checkpoint is a dict of tensors and plain data (loads with ``torch.load(weights_only=True)``), with
exactly the keys of :data:`KEYS` after ``format``:

- ``student_backbone`` / ``teacher_backbone``: backbone state dicts under torchvision/timm names
  (``teacher_backbone`` is None for SwAV, which has no teacher); the backbone the paper evaluates
  downstream is the student (docs/checkpoints.md, "lowssl");
- ``method_state``: the whole method (heads, teacher, DINO centre, SwAV / MoCo queues);
- ``method_config``: the method's config as it trains (``method.cfg``: family defaults filled in,
  SwAV's queue length shortened to whole global batches), with ``name``;
- ``optimizer``, ``grad_scaler``, ``online_probe``: training state;
- ``epoch``, ``step_in_epoch`` (the next batch to run), ``global_step``;
- ``rng``: torch (CPU and CUDA) and Python RNG states; ``metrics``: the last monitor values;
- ``method``, ``backbone``, ``recipe``, ``config`` (the resolved config as plain data),
  ``config_hash``, ``git_commit``: what trained it (:func:`provenance`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lowssl.io import atomic_torch_save, load_checkpoint
from lowssl.records import pretrain_budget

#: What a file from elsewhere does not say: the provenance defaults (lowssl.subject uses it too).
UNKNOWN = "unknown"

FORMAT = "lowssl-pretrain-v1"
#: Every key a checkpoint holds besides ``format``, in the order they are written.
KEYS = (
    "student_backbone",
    "teacher_backbone",
    "method_state",
    "method_config",
    "optimizer",
    "grad_scaler",
    "online_probe",
    "epoch",
    "step_in_epoch",
    "global_step",
    "rng",
    "metrics",
    "method",
    "backbone",
    "recipe",
    "config",
    "config_hash",
    "git_commit",
)
# Changing any of these changes the model or the method: resuming across such a change is refused.
MODEL_KEYS = ("backbone", "drop_path_rate", "method", "views", "recipe")
# Model keys added after checkpoints were first written, with the value those checkpoints trained with.
ADDED_MODEL_KEYS = {"drop_path_rate": 0.0}


def save(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (exactly the keys of :data:`KEYS`) atomically: a failed write (disk full,
    killed process) leaves the previous file intact."""
    if set(payload) != set(KEYS):
        missing, extra = sorted(set(KEYS) - set(payload)), sorted(set(payload) - set(KEYS))
        raise ValueError(f"{FORMAT} checkpoint keys differ from the schema: missing {missing}, extra {extra}")
    return atomic_torch_save({"format": FORMAT, **payload}, path)


def load(path: str | Path) -> dict[str, Any]:
    """The payload of a lowssl pre-training checkpoint (weights-only); read what trained it with
    :func:`provenance`."""
    checkpoint = load_checkpoint(path)
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise ValueError(f"{path} is not a lowssl pre-training checkpoint (format {FORMAT})")
    return checkpoint


@dataclass(frozen=True)
class Provenance:
    """What trained a backbone, as the records name it; "unknown" where the file does not say
    (third-party files: their own fields are not read, see docs/checkpoints.md)."""

    method: str = UNKNOWN
    recipe: str = UNKNOWN
    pretrain_epochs: int = 0
    seed: int | None = None  # the pre-training seed
    budget: str = ""  # lowssl.records.pretrain_budget of the run's config


def provenance(payload: Mapping[str, Any]) -> Provenance:
    """What trained the checkpoint ``payload`` (a lowssl one; missing fields read as unknown)."""
    config = payload.get("config") or {}
    return Provenance(
        method=str(payload.get("method", UNKNOWN)),
        recipe=str(payload.get("recipe", UNKNOWN)),
        pretrain_epochs=int(payload.get("epoch", 0)),
        seed=config.get("seed"),
        budget=pretrain_budget(config),
    )


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        flat: dict[str, Any] = {}
        for key, value in data.items():
            flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: data}


def model_differences(saved_config: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """Differences in the keys that define the model or the method, as 'key: saved -> now' lines."""
    saved = _flatten({k: saved_config.get(k, ADDED_MODEL_KEYS.get(k)) for k in MODEL_KEYS})
    now = _flatten({k: config.get(k) for k in MODEL_KEYS})
    return [
        f"{key}: {saved.get(key)!r} -> {now.get(key)!r}"
        for key in sorted(set(saved) | set(now))
        if saved.get(key) != now.get(key)
    ]
