"""Batching multi-crop samples: one tensor per view, as the methods take them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor


def collate_views(batch: Sequence[tuple[list[Tensor], Any]]) -> tuple[list[Tensor], Tensor]:
    """DataLoader collate: [(views, label), ...] -> ([one (B, C, H, W) tensor per view], labels)."""
    views, labels = zip(*batch, strict=True)
    return [torch.stack(same_view) for same_view in zip(*views, strict=True)], torch.as_tensor(labels)
