"""Random-number state every training stage shares: per-sample seeds and checkpointable RNG states.

Seeding each sample by (seed, epoch, index) instead of by the loader worker makes a sample's
augmentation independent of the number of workers and processes, which is what lets a run resumed
inside an epoch see exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


def rng_state() -> dict[str, Any]:
    """torch (CPU, CUDA) and Python RNG states as tensors and plain data (weights-only loadable)."""
    version, internal, _ = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "python_version": version,
        "python": torch.tensor(internal, dtype=torch.int64),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(int(v) for v in state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
