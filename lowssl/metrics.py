"""Classification accuracy counts, shared by the linear probe and the semi-supervised fine-tuning."""

from __future__ import annotations

import torch


def topk_hits(logits: torch.Tensor, labels: torch.Tensor, k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Numbers of rows whose label is the top-1 class and among the top-min(k, classes) classes,
    as 0-d tensors on the logits' device (summed over processes or batches by the caller)."""
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    return (top[:, 0] == labels).sum(), (top == labels[:, None]).any(dim=1).sum()
