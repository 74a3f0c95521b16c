"""MoCo-v2* (MoCo v2, Chen et al., 2020, with multi-crop) and the paper's loss re-balancing (Eq. 3).

One key (global 1 through the momentum encoder); queries are global 2 and every local
(docs/recipes.md, "Loss re-balancing"). InfoNCE and the queue follow MoCo's moco/builder.py.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lowssl.config import require
from lowssl.distributed import all_gather_cat

from .base import (
    MethodOutput,
    MultiCropMethod,
    RunLayout,
    check_views,
    multicrop_forward,
    output,
)
from .rebalance import check_alpha, effective_alpha, rebalance


@dataclass
class MocoConfig:
    # Eq. 3 weight of the global query's loss; None = Eq. 2 (baseline); "ours": 0.4 (docs/recipes.md,
    # "Baseline and ours").
    alpha: float | None = None
    hidden_dim: int = 2048  # 2-layer MLP head, hidden 2048, no BN (docs/recipes.md, "Multi-crop MoCo-v2")
    out_dim: int = 128  # docs/recipes.md, "Multi-crop MoCo-v2"
    temperature: float = 0.2  # MoCo v2 (docs/recipes.md, "Multi-crop MoCo-v2")
    momentum: float = 0.999  # key encoder EMA, fixed (docs/recipes.md, "Multi-crop MoCo-v2")
    queue_length: int = 65536  # negatives, over all processes (docs/recipes.md, "Multi-crop MoCo-v2")

    def __post_init__(self) -> None:
        check_alpha(self.alpha, key="alpha")  # the loader prefixes the section name
        for key in ("hidden_dim", "out_dim", "queue_length"):
            require(getattr(self, key) > 0, key, f"must be > 0, got {getattr(self, key)}")
        require(self.temperature > 0, "temperature", f"must be > 0, got {self.temperature}")
        require(0 <= self.momentum <= 1, "momentum", f"must be in [0, 1], got {self.momentum}")


class MoCoHead(nn.Module):
    """Linear-ReLU-Linear, L2-normalised (MoCo v2's MLP head; hidden width 2048 per docs/recipes.md,
    "Multi-crop MoCo-v2"). Initialised as the authors' ``MOCOHead``: weights truncated normal (std 0.02),
    biases 0 (saic-fi/SSLight@0934b88:src/sslight/model/moco.py, ``_init_weights``); the paper is silent."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim)
        )
        for layer in (self.mlp[0], self.mlp[2]):
            nn.init.trunc_normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.mlp(x), dim=1)


class MoCoLoss(nn.Module):
    """InfoNCE of each query against [its key; the queue], re-balanced between global and local queries."""

    def __init__(self, temperature: float, alpha: float | None) -> None:
        super().__init__()
        self.temperature = temperature
        self.alpha = alpha

    @staticmethod
    def pair_counts(n_local: int) -> tuple[int, int]:
        """One key (global 1). gg: (key, global-2 query) -> 1; gl: (key, each local query) -> L."""
        return 1, n_local

    def forward(
        self, queries: Tensor, keys: Tensor, queue: Tensor
    ) -> tuple[Tensor, dict[str, Tensor | float]]:
        """queries: (V_q * B, D), global 2 first then the locals; keys: (B, D); queue: (K, D); all unit norm."""
        batch = keys.shape[0]
        per_view = queries.view(-1, batch, queries.shape[1])  # (V_q, B, D)
        positives = torch.sum(per_view * keys, dim=2, keepdim=True)  # (V_q, B, 1)
        negatives = per_view @ queue.t()  # (V_q, B, K): every query view in one product
        logits = torch.cat([positives, negatives], dim=2) / self.temperature
        labels = torch.zeros(batch * len(per_view), dtype=torch.long, device=keys.device)  # positive: 0
        pair_losses = F.cross_entropy(logits.flatten(0, 1), labels, reduction="none").view(-1, batch).mean(1)
        loss_gg, loss_gl = pair_losses[0], pair_losses[1:].sum()
        accuracy = (logits[0].argmax(dim=1) == 0).float().mean()
        p_gg, p_gl = self.pair_counts(queries.shape[0] // batch - 1)
        loss = rebalance(loss_gg, loss_gl, p_gg, p_gl, self.alpha)
        return loss, {
            "loss_gg": loss_gg.detach() / p_gg,
            "loss_gl": loss_gl.detach() / max(p_gl, 1),
            "alpha": effective_alpha(self.alpha, p_gg, p_gl),
            "acc_gg": accuracy,  # instance discrimination top-1 of the global query
        }


class MoCo(MultiCropMethod):
    name = "moco"
    config_class = MocoConfig

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        family: str,
        cfg: MocoConfig,
        layout: RunLayout | None = None,
    ) -> None:
        super().__init__(backbone, cfg, layout)
        self.student_head = MoCoHead(feature_dim, cfg.hidden_dim, cfg.out_dim)
        # Key encoder: starts as a copy of the query encoder, then moves by EMA only.
        self.teacher_backbone = copy.deepcopy(backbone).requires_grad_(False)
        self.teacher_head = copy.deepcopy(self.student_head).requires_grad_(False)
        self.criterion = MoCoLoss(cfg.temperature, cfg.alpha)
        # Rows are keys (MoCo stores the transpose); random unit vectors until real keys replace them.
        self.register_buffer("queue", F.normalize(torch.randn(cfg.queue_length, cfg.out_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def pair_counts(self, n_local: int) -> tuple[int, int]:
        return self.criterion.pair_counts(n_local)

    def forward(self, views: Sequence[Tensor], epoch: int) -> MethodOutput:
        check_views(views)
        queries, keys = self.forward_networks(views)
        # A copy: enqueue below overwrites the queue that backward still needs (as MoCo's builder).
        loss, monitor = self.criterion(queries, keys, self.queue.clone().detach())
        self.enqueue(keys)
        return output(loss, monitor)

    def forward_networks(self, views: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """Queries: the query encoder on global 2 and the locals; keys: the key encoder on global 1."""
        with torch.no_grad():
            keys = self.teacher_head(self.teacher_backbone(views[0]))
        return multicrop_forward(self.student_backbone, self.student_head, views[1:]), keys

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Overwrite the oldest entries with the keys of every process, wrapping around the end."""
        keys = all_gather_cat(keys)[-self.queue.shape[0] :]  # more keys than slots: keep the newest
        slots = (self.queue_ptr + torch.arange(keys.shape[0], device=keys.device)) % self.queue.shape[0]
        self.queue[slots] = keys.to(self.queue.dtype)
        self.queue_ptr.copy_((self.queue_ptr + keys.shape[0]) % self.queue.shape[0])

    def student_teacher_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.student_backbone, self.teacher_backbone), (self.student_head, self.teacher_head)]

    def teacher_momentum(self, step: int, total_steps: int) -> float:
        return self.cfg.momentum
