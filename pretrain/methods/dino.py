"""DINO (Caron et al., 2021) with the paper's loss re-balancing (Eq. 3).

Head, loss and EMA follow DINO's main_dino.py / vision_transformer.py; the CNN / ViT values are the
authors' released configs (docs/recipes.md, "DINO").
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

from lowssl.backbones import without_drop_path
from lowssl.config import require
from lowssl.heads import projection_layers

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
class DinoConfig:
    # Eq. 3 weight of the global-global mean; None = Eq. 2 (baseline, 1/7 with 6 locals); "ours": 0.4.
    alpha: float | None = None
    # None = from the backbone family (authors' configs; docs/recipes.md, "DINO"): CNN 4096 / ViT 65536.
    out_dim: int | None = None
    # None = from the family: BN in the head for CNNs, not for ViTs (docs/recipes.md, "DINO").
    use_bn_in_head: bool | None = None
    # None = from the family: last-layer weight-norm g fixed to 1 for CNNs, trained for ViTs.
    norm_last_layer: bool | None = None
    hidden_dim: int = 2048  # DINOHead hidden width (docs/recipes.md, "DINO")
    bottleneck_dim: int = 256  # DINOHead bottleneck before the L2-norm (docs/recipes.md, "DINO")
    student_temp: float = 0.1  # docs/recipes.md, "DINO"
    warmup_teacher_temp: float = 0.04  # docs/recipes.md, "DINO"
    teacher_temp: float = 0.07  # docs/recipes.md, "DINO"
    # None = from the family: 50 epochs for CNNs, 30 for ViTs (docs/recipes.md, "DINO").
    warmup_teacher_temp_epochs: int | None = None
    center_momentum: float = 0.9  # docs/recipes.md, "DINO"
    momentum_teacher: float = 0.996  # EMA 0.996 -> 1.0, cosine per step (docs/recipes.md, "DINO")
    freeze_last_layer_epochs: int = 1  # last layer frozen in the first epoch (docs/recipes.md, "DINO")

    def __post_init__(self) -> None:
        check_alpha(self.alpha, key="alpha")  # the loader prefixes the section name
        for key in ("out_dim", "hidden_dim", "bottleneck_dim"):
            value = getattr(self, key)
            require(value is None or value > 0, key, f"must be > 0, got {value}")
        warmup = self.warmup_teacher_temp_epochs
        require(warmup is None or warmup >= 0, "warmup_teacher_temp_epochs", f"must be >= 0, got {warmup}")
        for key in ("student_temp", "warmup_teacher_temp", "teacher_temp"):
            require(getattr(self, key) > 0, key, f"must be > 0, got {getattr(self, key)}")
        for key in ("center_momentum", "momentum_teacher"):
            require(0 <= getattr(self, key) <= 1, key, f"must be in [0, 1], got {getattr(self, key)}")
        require(self.freeze_last_layer_epochs >= 0, "freeze_last_layer_epochs", "must be >= 0")

    def for_family(self, family: str) -> DinoConfig:
        """This config with the family-dependent defaults (None) filled in."""
        require(family in ("cnn", "vit"), "family", f"allowed values: 'cnn', 'vit'; got {family!r}")
        cnn = family == "cnn"
        return dataclasses.replace(
            self,
            out_dim=self.out_dim if self.out_dim is not None else (4096 if cnn else 65536),
            use_bn_in_head=self.use_bn_in_head if self.use_bn_in_head is not None else cnn,
            norm_last_layer=self.norm_last_layer if self.norm_last_layer is not None else cnn,
            warmup_teacher_temp_epochs=(
                self.warmup_teacher_temp_epochs
                if self.warmup_teacher_temp_epochs is not None
                else (50 if cnn else 30)
            ),
        )


class DINOHead(nn.Module):
    """Linear-[BN]-GELU, Linear-[BN]-GELU, Linear -> L2-norm -> weight-normalised Linear (no bias)."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        use_bn: bool,
        norm_last_layer: bool,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
    ) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            *projection_layers(in_dim, hidden_dim, use_bn), nn.Linear(hidden_dim, bottleneck_dim)
        )
        self.mlp.apply(self._init_weights)
        # The last layer keeps nn.Linear's default init, as in DINO; weight = g * v / ||v|| per output.
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        magnitude = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            magnitude.fill_(1)
        # DINO's norm_last_layer: g stays 1, which DINO found stabilises CNN / small-batch training.
        magnitude.requires_grad_(not norm_last_layer)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))


def teacher_temperature(epoch: int, warmup: float, final: float, warmup_epochs: int) -> float:
    """DINO's schedule: np.linspace(warmup, final, warmup_epochs) for the first epochs, then final."""
    if epoch >= warmup_epochs:
        return final
    fraction = epoch / (warmup_epochs - 1) if warmup_epochs > 1 else 0.0
    return warmup + (final - warmup) * fraction


class DINOLoss(nn.Module):
    """Cross-entropy between centred, sharpened teacher outputs and student outputs, re-balanced."""

    def __init__(self, cfg: DinoConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.register_buffer("center", torch.zeros(1, cfg.out_dim))

    @staticmethod
    def pair_counts(n_local: int) -> tuple[int, int]:
        """The teacher sees only the 2 globals. gg: (teacher i, student j), i != j, both global -> 2;
        gl: each teacher global x each student local -> 2L."""
        return NUM_GLOBAL_VIEWS * (NUM_GLOBAL_VIEWS - 1), NUM_GLOBAL_VIEWS * n_local

    def teacher_temp(self, epoch: int) -> float:
        cfg = self.cfg
        return teacher_temperature(
            epoch, cfg.warmup_teacher_temp, cfg.teacher_temp, cfg.warmup_teacher_temp_epochs
        )

    def forward(
        self, student_output: Tensor, teacher_output: Tensor, epoch: int
    ) -> tuple[Tensor, dict[str, Tensor | float]]:
        """student_output: (V * B, K) for all V views; teacher_output: (2 * B, K) for the globals."""
        batch = teacher_output.shape[0] // NUM_GLOBAL_VIEWS
        n_views = student_output.shape[0] // batch
        temp = self.teacher_temp(epoch)
        with torch.autocast(student_output.device.type, enabled=False):  # the loss in float32
            student_log_probs = F.log_softmax(student_output.float() / self.cfg.student_temp, dim=-1)
            teacher_probs = F.softmax((teacher_output.float() - self.center) / temp, dim=-1).detach()
            # cross_entropy[t, s] = batch mean of -sum_k q_t log p_s, the loss of the pair (teacher
            # view t, student view s), for all pairs in one contraction.
            cross_entropy = (
                -torch.einsum(
                    "tbk,sbk->ts",
                    teacher_probs.view(NUM_GLOBAL_VIEWS, batch, -1),
                    student_log_probs.view(n_views, batch, -1),
                )
                / batch
            )
        global_pairs = cross_entropy[:, :NUM_GLOBAL_VIEWS]
        loss_gg = global_pairs.sum() - global_pairs.diagonal().sum()  # a view is not matched with itself
        loss_gl = cross_entropy[:, NUM_GLOBAL_VIEWS:].sum()
        p_gg, p_gl = self.pair_counts(n_views - NUM_GLOBAL_VIEWS)
        loss = rebalance(loss_gg, loss_gl, p_gg, p_gl, self.cfg.alpha)
        self.update_center(teacher_output)
        return loss, {
            "loss_gg": loss_gg.detach() / p_gg,
            "loss_gl": loss_gl.detach() / max(p_gl, 1),
            "alpha": effective_alpha(self.cfg.alpha, p_gg, p_gl),
            "teacher_temp": temp,
        }

    @torch.no_grad()
    def update_center(self, teacher_output: Tensor) -> None:
        """center <- m * center + (1 - m) * batch mean of the teacher outputs over all processes."""
        batch_sum = all_reduce_sum(teacher_output.sum(dim=0, keepdim=True))
        batch_center = batch_sum / (teacher_output.shape[0] * world_size())
        self.center.mul_(self.cfg.center_momentum).add_(batch_center, alpha=1 - self.cfg.center_momentum)


class DINO(MultiCropMethod):
    name = "dino"
    config_class = DinoConfig

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        family: str,
        cfg: DinoConfig,
        layout: RunLayout | None = None,
    ) -> None:
        cfg = cfg.for_family(family)
        super().__init__(backbone, cfg, layout)
        self.student_head = DINOHead(
            feature_dim,
            cfg.out_dim,
            cfg.use_bn_in_head,
            cfg.norm_last_layer,
            cfg.hidden_dim,
            cfg.bottleneck_dim,
        )
        # The teacher starts as an exact copy of the student and only moves by EMA. It has no stochastic
        # depth: facebookresearch/dino:main_dino.py and saic-fi/SSLight:src/sslight/model/dino.py build
        # it without drop_path_rate.
        self.teacher_backbone = without_drop_path(backbone).requires_grad_(False)
        self.teacher_head = copy.deepcopy(self.student_head).requires_grad_(False)
        self.criterion = DINOLoss(cfg)

    def pair_counts(self, n_local: int) -> tuple[int, int]:
        return self.criterion.pair_counts(n_local)

    def forward(self, views: Sequence[Tensor], epoch: int) -> MethodOutput:
        check_views(views)
        student_output, teacher_output = self.forward_networks(views)
        return output(*self.criterion(student_output, teacher_output, epoch))

    def forward_networks(self, views: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """Student on every view, teacher on the globals."""
        with torch.no_grad():
            teacher_output = multicrop_forward(
                self.teacher_backbone, self.teacher_head, views[:NUM_GLOBAL_VIEWS]
            )
        return multicrop_forward(self.student_backbone, self.student_head, views), teacher_output

    def student_teacher_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.student_backbone, self.teacher_backbone), (self.student_head, self.teacher_head)]

    def teacher_momentum(self, step: int, total_steps: int) -> float:
        """DINO's cosine_scheduler(momentum_teacher, 1, ...): momentum_teacher at step 0, -> 1.0."""
        base = self.cfg.momentum_teacher
        return 1.0 + 0.5 * (base - 1.0) * (1 + math.cos(math.pi * step / total_steps))

    def cancel_frozen_gradients(self, epoch: int) -> None:
        freeze_in_first_epochs(self.student_head.last_layer, epoch, self.cfg.freeze_last_layer_epochs)
