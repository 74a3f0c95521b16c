"""SwAV (Caron et al., 2020) with the paper's loss re-balancing (Eq. 3).

Codes, Sinkhorn-Knopp and the queue follow SwAV's main_swav.py; the values are the authors' released
configs (docs/recipes.md, "SwAV").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lowssl.config import ConfigError, require

from .base import (
    NUM_GLOBAL_VIEWS,
    MethodOutput,
    MultiCropMethod,
    RunLayout,
    all_reduce_sum,
    check_views,
    freeze_in_first_epochs,
    multicrop_forward,
    output,
    world_size,
)
from .rebalance import check_alpha, effective_alpha, rebalance


@dataclass
class SwavConfig:
    # Eq. 3 weight of the global-global mean; None = Eq. 2 (baseline); "ours": 0.4 (docs/recipes.md,
    # "Baseline and ours").
    alpha: float | None = None
    hidden_dim: int = 4096  # projection head hidden width, with BN (docs/recipes.md, "SwAV")
    out_dim: int = 128  # projection output (docs/recipes.md, "SwAV")
    n_prototypes: int = 3000  # docs/recipes.md, "SwAV"
    temperature: float = 0.1  # docs/recipes.md, "SwAV"
    epsilon: float = 0.05  # Sinkhorn-Knopp entropy regularisation (docs/recipes.md, "SwAV")
    sinkhorn_iterations: int = 3  # docs/recipes.md, "SwAV"
    # Over all processes, shortened to whole global batches (effective_queue_length); 0 disables the
    # queue (docs/recipes.md, "SwAV").
    queue_length: int = 3840
    queue_start_epoch: int = 15  # queue of 3840 from epoch 15 (docs/recipes.md, "SwAV")
    freeze_prototypes_epochs: int = 1  # frozen during the first epoch (docs/recipes.md, "SwAV")

    def __post_init__(self) -> None:
        check_alpha(self.alpha, key="alpha")  # the loader prefixes the section name
        for key in ("hidden_dim", "out_dim", "n_prototypes", "sinkhorn_iterations"):
            require(getattr(self, key) > 0, key, f"must be > 0, got {getattr(self, key)}")
        for key in ("temperature", "epsilon"):
            require(getattr(self, key) > 0, key, f"must be > 0, got {getattr(self, key)}")
        for key in ("queue_length", "queue_start_epoch", "freeze_prototypes_epochs"):
            require(getattr(self, key) >= 0, key, f"must be >= 0, got {getattr(self, key)}")


class SwAVHead(nn.Module):
    """Linear-BN-ReLU-Linear projection, L2-normalised (SwAV's forward_head)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.mlp(x), dim=1)


@torch.no_grad()
def sinkhorn(scores: Tensor, epsilon: float, n_iterations: int) -> Tensor:
    """SwAV's distributed_sinkhorn: soft, equipartitioned codes (N, K) for prototype scores (N, K).

    In SwAV's notation Q = exp(scores / eps)^T is K x B (B = samples over all processes). Alternately
    make every prototype (row) total 1/K and every sample (column) total 1/B; finally scale by B so
    each sample's code sums to 1 (and each prototype receives B/K).
    """
    q = torch.exp(scores.float() / epsilon).t()  # float32: exp(1 / 0.05) overflows half precision
    n_samples = q.shape[1] * world_size()
    n_prototypes = q.shape[0]
    q /= all_reduce_sum(q.sum())
    for _ in range(n_iterations):
        q /= all_reduce_sum(q.sum(dim=1, keepdim=True))
        q /= n_prototypes
        q /= q.sum(dim=0, keepdim=True)
        q /= n_samples
    q *= n_samples
    return q.t()


class SwAVLoss(nn.Module):
    """Swapped prediction: the code of global i is predicted from every other view, re-balanced."""

    def __init__(self, temperature: float, alpha: float | None) -> None:
        super().__init__()
        self.temperature = temperature
        self.alpha = alpha

    @staticmethod
    def pair_counts(n_local: int) -> tuple[int, int]:
        """Codes come from the 2 globals. gg: code of global i predicted from the other global -> 2;
        gl: code of each global predicted from each local -> 2L."""
        return NUM_GLOBAL_VIEWS * (NUM_GLOBAL_VIEWS - 1), NUM_GLOBAL_VIEWS * n_local

    def forward(self, scores: Tensor, codes: Sequence[Tensor]) -> tuple[Tensor, dict[str, Tensor | float]]:
        """scores: (V * B, K) prototype scores of all V views; codes: one (B, K) code per global."""
        batch = codes[0].shape[0]
        log_probs = F.log_softmax(scores / self.temperature, dim=1).split(batch)
        loss_gg = loss_gl = scores.new_zeros(())
        for i, q in enumerate(codes):
            for v, log_p in enumerate(log_probs):
                if v == i:  # a view does not predict its own code
                    continue
                pair_loss = -torch.sum(q * log_p, dim=1).mean()
                if v < NUM_GLOBAL_VIEWS:
                    loss_gg = loss_gg + pair_loss
                else:
                    loss_gl = loss_gl + pair_loss
        p_gg, p_gl = self.pair_counts(len(log_probs) - NUM_GLOBAL_VIEWS)
        loss = rebalance(loss_gg, loss_gl, p_gg, p_gl, self.alpha)
        return loss, {
            "loss_gg": loss_gg.detach() / p_gg,
            "loss_gl": loss_gl.detach() / max(p_gl, 1),
            "alpha": effective_alpha(self.alpha, p_gg, p_gl),
        }


def effective_queue_length(queue_length: int, global_batch: int | None) -> int:
    """The queue SwAV trains with: ``facebookresearch/swav:main_swav.py`` (and the authors'
    ``saic-fi/SSLight:src/sslight/engine/trainer.py``) shortens the configured length to whole global
    batches, ``queue_length -= queue_length % (batch_size * world_size)``, before each process takes
    ``queue_length // world_size`` rows. Unchanged while the batch is not known."""
    if global_batch is None:
        return queue_length
    return queue_length - queue_length % global_batch


def _init_linear(module: nn.Module) -> None:
    # Linear layers N(0, 0.01), zero bias (docs/recipes.md, "SwAV").
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.01)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class SwAV(MultiCropMethod):
    name = "swav"
    config_class = SwavConfig

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        family: str,
        cfg: SwavConfig,
        layout: RunLayout | None = None,
    ) -> None:
        super().__init__(backbone, cfg, layout)
        global_batch = self.layout.global_batch
        queue_length = effective_queue_length(cfg.queue_length, global_batch)
        if cfg.queue_length and not queue_length:
            raise ConfigError(
                f"config key 'method.queue_length': {cfg.queue_length} is shorter than the global batch "
                f"{global_batch}, and SwAV keeps whole global batches, so no queue would be left; set 0 "
                f"(no queue) or at least {global_batch}"
            )
        # method.cfg is the config the method trains with (as DINO's family defaults): the queue as
        # shortened, which the training loop logs and records in its checkpoints.
        self.cfg = dataclasses.replace(cfg, queue_length=queue_length)
        self.projection_head = SwAVHead(feature_dim, cfg.hidden_dim, cfg.out_dim)
        self.prototypes = nn.Linear(cfg.out_dim, cfg.n_prototypes, bias=False)
        self.projection_head.apply(_init_linear)
        self.prototypes.apply(_init_linear)
        self.criterion = SwAVLoss(cfg.temperature, cfg.alpha)
        # Per-process queue of the globals' embeddings, newest first, as SwAV (queue_length // world size).
        self.register_buffer(
            "queue", torch.zeros(NUM_GLOBAL_VIEWS, queue_length // self.layout.n_processes, cfg.out_dim)
        )

    def pair_counts(self, n_local: int) -> tuple[int, int]:
        return self.criterion.pair_counts(n_local)

    def config_changes(self, configured: SwavConfig) -> str | None:
        if self.cfg.queue_length == configured.queue_length:
            return None
        return (
            f"method.queue_length {configured.queue_length} -> {self.cfg.queue_length}: SwAV's queue "
            f"holds whole global batches of {self.layout.global_batch} (SwAV's main_swav.py), "
            f"{self.queue.shape[1]} rows per process"
        )

    @torch.no_grad()
    def normalize_prototypes(self) -> None:
        """Prototypes live on the unit sphere: re-normalised before every forward, as SwAV."""
        self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))

    def forward(self, views: Sequence[Tensor], epoch: int) -> MethodOutput:
        batch = check_views(views)
        embeddings, _ = self.forward_networks(views)
        scores = self.prototypes(embeddings)
        use_queue = epoch >= self.cfg.queue_start_epoch and self.queue.shape[1] > 0
        # SwAV prepends the queue once its oldest slot has been written (both queues fill together).
        queue_full = use_queue and bool(torch.any(self.queue[:, -1] != 0))
        codes = []
        for i in range(NUM_GLOBAL_VIEWS):
            rows = slice(i * batch, (i + 1) * batch)
            queue = self.queue[i] if use_queue else None
            codes.append(self.assign(scores[rows].detach(), embeddings[rows].detach(), queue, queue_full))
        loss, monitor = self.criterion(scores, codes)
        return output(loss, {**monitor, "queue_used": float(queue_full)})

    def forward_networks(self, views: Sequence[Tensor]) -> tuple[Tensor, None]:
        """Embeddings of every view (backbone + projection head); no teacher. The prototype scores,
        one small matrix product, belong to the loss (as SwAV's clustering step)."""
        return multicrop_forward(self.student_backbone, self.projection_head, views), None

    @torch.no_grad()
    def assign(self, scores: Tensor, embeddings: Tensor, queue: Tensor | None, queue_full: bool) -> Tensor:
        """Codes (B, K) of one global view: Sinkhorn on its scores, with the queued embeddings' scores
        prepended when the queue is full (more samples for the equipartition of small batches); then
        the batch's embeddings enter the queue (in place), newest first."""
        if queue is not None:
            if queue_full:
                scores = torch.cat([self.prototypes(queue), scores])
            queue.copy_(torch.cat([embeddings, queue])[: queue.shape[0]])
        return sinkhorn(scores, self.cfg.epsilon, self.cfg.sinkhorn_iterations)[-embeddings.shape[0] :]

    def cancel_frozen_gradients(self, epoch: int) -> None:
        freeze_in_first_epochs(self.prototypes, epoch, self.cfg.freeze_prototypes_epochs)
