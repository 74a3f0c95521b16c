"""Pre-training checkpoints: what they hold, how they are written, how a run resumes from one.

A checkpoint is a dict of tensors and plain data (loads with ``torch.load(weights_only=True)``):

- ``student_backbone`` / ``teacher_backbone``: backbone state dicts under torchvision/timm names
  (``teacher_backbone`` is None for SwAV, which has no teacher); the backbone the paper evaluates
  downstream is the student (docs/checkpoints.md, "lowssl");
- ``method_state``: the whole method (heads, teacher, DINO centre, SwAV / MoCo queues);
- ``method_config``: the method's config as it trains (``method.cfg``: family defaults filled in,
  SwAV's queue length shortened to whole global batches), with ``name``;
- ``optimizer``, ``grad_scaler``, ``online_probe``: training state;
- ``epoch``, ``step_in_epoch`` (the next batch to run), ``global_step``;
- ``rng``: torch (CPU and CUDA) and Python RNG states;
- ``config`` (the resolved config as plain data), ``config_hash``, ``git_commit``, ``method``,
  ``backbone``, ``recipe``, ``format``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lowssl.io import atomic_torch_save, load_checkpoint

FORMAT = "lowssl-pretrain-v1"
# Changing any of these changes the model or the method: resuming across such a change is refused.
MODEL_KEYS = ("backbone", "drop_path_rate", "method", "views", "recipe")
# Model keys added after checkpoints were first written, with the value those checkpoints trained with.
ADDED_MODEL_KEYS = {"drop_path_rate": 0.0}


def save(path: str | Path, payload: dict[str, Any]) -> Path:
    """Atomic: a failed write (disk full, killed process) leaves the previous file intact."""
    return atomic_torch_save({"format": FORMAT, **payload}, path)


def load(path: str | Path) -> dict[str, Any]:
    checkpoint = load_checkpoint(path)
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise ValueError(f"{path} is not a lowssl pre-training checkpoint (format {FORMAT})")
    return checkpoint


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
