"""Optimisers, parameter groups and per-step schedules for pre-training.

Paper Sec. 4.1 and docs/recipes.md, "Optimisation": CNNs use LARS (trust coefficient 0.001,
momentum 0.9, weight decay 1e-6 constant), ViTs use AdamW (weight decay cosine 0.04 -> 0.4); the LR
warms up linearly over 10 epochs to ``base_lr x batch/256`` and then follows a cosine to ``min_lr``;
every schedule is evaluated per step (DINO's ``utils.cosine_scheduler``).

How a training loop uses this module::

    optimizer = build_optimizer(student, cfg.optim)
    schedules = build_schedules(cfg.optim, epochs, len(loader), global_batch_size)
    for step, batch in enumerate(loader, start=global_step):
        values = schedules.apply(optimizer, step)  # writes this step's lr / wd, returns them
        loss = ...; optimizer.zero_grad(); loss.backward()
        if cfg.optim.clip_grad is not None:
            clip_gradients(student, cfg.optim.clip_grad)
        optimizer.step()

Parameter groups (:func:`param_groups`) are found by module type, never by parameter names:

- ``no_decay``: biases (a parameter registered as ``bias`` on its module), every parameter of a
  normalisation layer, and any other parameter with ``ndim <= 1`` (DINO's rule).
- ``depthwise``: the weight of a convolution with ``groups > 1`` and ``groups == in_channels``.
- ``regular``: everything else (conv / linear weights, ViT position embedding and CLS token as in DINO).

The two exclusion rules (``OptimConfig.exclusion_rule``) only differ in what they do to those groups:

=============  ============================  ==============================
group          ``paper`` (default)           ``authors`` (SSLight code)
=============  ============================  ==============================
regular        weight decay, LARS scaling    weight decay, LARS scaling
no_decay       no decay, no LARS scaling     no decay, no LARS scaling
depthwise      weight decay, no LARS         no weight decay, LARS scaling
=============  ============================  ==============================

``paper``: Sec. 4.1 says "depth-wise convolution layers and bias terms are excluded from layer-wise LR
scaling" and "all the other hyper-parameters are inherited from the original literature" (DINO). Our
reading: biases *and* the other 1-D parameters (norm weights) are excluded from both LARS scaling and
weight decay, exactly as DINO's LARS does for every 1-D parameter; depth-wise weights are excluded
from LARS scaling only and keep weight decay, because the paper names only the LR scaling and DINO
decays every weight with ``ndim > 1``. (At wd = 1e-6 the depth-wise decay hardly matters either way.)
``authors``: docs/recipes.md, "Paper vs SSLight" (SSLight ``get_params``,
``saic-fi/SSLight@0b94aeb:src/sslight/utils/param_utils.py``: WD_FACTOR_FOR_DW 0, LARS_EXCLUDE_DW
False, LARS_EXCLUDE_BIAS True). AdamW uses the same groups; only their weight-decay switch applies to it.
Caveat, not reproduced: in SSLight's trainer as stored (src/sslight/engine/dino_trainer.py, commit
557e54a) the per-step loop writes the weight decay only into group 0 and the depth-wise group, so the
1-D group keeps its optimizer's constructor default (LARS: SOLVER.WEIGHT_DECAY, 1e-6; AdamW: torch's
0.01) and WD_FACTOR_FOR_BIAS (0) is never applied. lowssl gives that group no decay, as ``get_params``
intends (docs/recipes.md, "Paper vs SSLight").

Why not timm (checked with timm 1.0.31, see tests/test_optim.py::test_timm_*):

- ``timm.optim.Lars`` computes the trust ratio as ``eta*|p| / (|g| + wd*|p| + eps)``, not DINO's
  ``eta*|p| / |g + wd*p|`` (one step differs by 3e-3 absolute on a toy tensor with wd 0.1); it checks
  ``|g| > 0`` instead of ``|g + wd*p| > 0``; and it always adapts a group whose weight decay is non-zero,
  so "weight decay but no LARS scaling" (the paper rule's depth-wise group) cannot be expressed. It
  matches DINO only for ``weight_decay == 0`` with ``always_adapt=True``. Hence the small :class:`LARS`.
- ``timm.scheduler.CosineLRScheduler(t_in_epochs=False, warmup_prefix=True)`` reproduces DINO's cosine
  part exactly, but its warm-up is ``start + t*(base-start)/warmup_t`` (reaches ``base`` one step
  *after* the warm-up), while DINO's is ``np.linspace(start, base, warmup_steps)`` (ends *on* ``base``):
  e.g. 1.8816 instead of 1.92 at the last warm-up step. It also schedules only the LR, not the weight
  decay or the EMA momentum. Hence :func:`cosine_schedule`, a copy of DINO's maths as numpy arrays.
"""

from __future__ import annotations

import typing
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from lowssl.config import ConfigError, require
from lowssl.schedules import cosine_decay

OptimizerName = Literal["lars", "adamw"]
ExclusionRule = Literal["paper", "authors"]
GroupKind = Literal["regular", "no_decay", "depthwise"]

# (apply weight decay, apply LARS adaptation) per group kind; see the module docstring.
EXCLUSION_RULES: dict[str, dict[str, tuple[bool, bool]]] = {
    "paper": {"regular": (True, True), "no_decay": (False, False), "depthwise": (True, False)},
    "authors": {"regular": (True, True), "no_decay": (False, False), "depthwise": (False, True)},
}

NORM_LAYERS: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,  # BatchNorm1d/2d/3d, SyncBatchNorm, InstanceNorm*
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)


@dataclass
class OptimConfig:
    """The ``optim:`` section of a pre-training config. Defaults: the paper's CNN (LARS) recipe."""

    name: OptimizerName = "lars"  # paper Sec. 4.1: LARS for CNNs, AdamW for ViTs
    base_lr: float = 0.48  # x batch/256; Sec. 4.1 (CNN); ViT 0.0005; SwAV 0.3 (docs/recipes.md)
    min_lr: float = 0.0048  # absolute (not scaled); docs/recipes.md: LARS recipes 0.0048, ViT 1e-5
    warmup_epochs: int = 10  # Sec. 4.1: "linear learning rate warm-up in the first 10 epochs"
    # absolute, as SSLight's START_WARMUP (not scaled by the batch); docs/recipes.md, "SwAV"
    warmup_start_lr: float = 0.0  # DINO 0; SwAV 0.075
    weight_decay: float = 1e-6  # docs/recipes.md: CNN 1e-6 constant; ViT 0.04
    weight_decay_end: float = 1e-6  # docs/recipes.md: CNN 1e-6 (constant); ViT 0.4 (cosine)
    momentum: float = 0.9  # LARS momentum, docs/recipes.md (unused by AdamW, which keeps betas (0.9, 0.999))
    trust_coefficient: float = 0.001  # LARS eta, docs/recipes.md (unused by AdamW)
    exclusion_rule: ExclusionRule = "paper"  # Sec. 4.1 text; "authors" = SSLight code (docs/recipes.md)
    # Per-parameter gradient clipping as DINO's utils.clip_gradients; None disables. Not in the paper:
    # the authors' released configs set SOLVER.CLIP_GRAD 0.0 (off) for CNN and ViT (DINO's own default
    # is 3.0).
    clip_grad: float | None = None
    lr_reference_batch_size: int = 256  # linear scaling rule "x batchsize/256", Sec. 4.1

    def __post_init__(self) -> None:
        require(
            self.name in typing.get_args(OptimizerName),
            "name",
            f"{self.name!r} is not allowed; allowed values: 'lars', 'adamw'",
        )
        require(
            self.exclusion_rule in EXCLUSION_RULES,
            "exclusion_rule",
            f"{self.exclusion_rule!r} is not allowed; allowed values: 'paper', 'authors'",
        )
        require(self.base_lr > 0, "base_lr", f"must be > 0, got {self.base_lr}")
        require(self.min_lr >= 0, "min_lr", f"must be >= 0, got {self.min_lr}")
        require(self.warmup_epochs >= 0, "warmup_epochs", f"must be >= 0, got {self.warmup_epochs}")
        require(self.warmup_start_lr >= 0, "warmup_start_lr", f"must be >= 0, got {self.warmup_start_lr}")
        require(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        require(self.weight_decay_end >= 0, "weight_decay_end", f"must be >= 0, got {self.weight_decay_end}")
        require(0 <= self.momentum < 1, "momentum", f"must be in [0, 1), got {self.momentum}")
        require(self.trust_coefficient > 0, "trust_coefficient", f"must be > 0, got {self.trust_coefficient}")
        require(
            self.clip_grad is None or self.clip_grad > 0,
            "clip_grad",
            f"must be > 0 or null (no clipping), got {self.clip_grad}",
        )
        require(
            self.lr_reference_batch_size > 0,
            "lr_reference_batch_size",
            f"must be > 0, got {self.lr_reference_batch_size}",
        )

    def peak_lr(self, batch_size: int) -> float:
        """``base_lr x batch_size / lr_reference_batch_size`` (the LR at the end of the warm-up)."""
        return self.base_lr * batch_size / self.lr_reference_batch_size


# --------------------------------------------------------------------------------------------------
# Parameter groups
# --------------------------------------------------------------------------------------------------


def is_depthwise_conv(module: nn.Module) -> bool:
    """A convolution whose every input channel has its own filters (groups == in_channels > 1)."""
    return (
        isinstance(module, nn.modules.conv._ConvNd)
        and module.groups > 1
        and module.groups == module.in_channels
    )


def classify_parameters(model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Trainable parameters of ``model`` by group kind, with their qualified names.

    Walks the modules (so the decision is by module type, not by name); a parameter shared by several
    modules is classified once, at its first occurrence; frozen parameters (``requires_grad`` False)
    are left out, as DINO's ``get_params_groups`` does.
    """
    kinds: dict[str, list[tuple[str, nn.Parameter]]] = {"regular": [], "no_decay": [], "depthwise": []}
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if id(param) in seen or not param.requires_grad:
                continue
            seen.add(id(param))
            name = f"{module_name}.{param_name}" if module_name else param_name
            if param_name == "bias" or isinstance(module, NORM_LAYERS) or param.ndim <= 1:
                kind = "no_decay"
            elif param_name == "weight" and is_depthwise_conv(module):
                kind = "depthwise"
            else:
                kind = "regular"
            kinds[kind].append((name, param))
    return kinds


def param_groups(model: nn.Module, exclusion_rule: str = "paper", weight_decay: float = 0.0) -> list[dict]:
    """Optimizer parameter groups for ``model`` under ``exclusion_rule`` (see the module docstring).

    Each group carries ``params`` (as ``(name, param)`` pairs: torch stores the names in
    ``param_names``), ``kind`` (regular / no_decay / depthwise), ``apply_weight_decay``,
    ``lars_adaptation`` and ``weight_decay`` (``weight_decay`` or 0). Empty groups are dropped.
    """
    if exclusion_rule not in EXCLUSION_RULES:
        raise ConfigError(
            f"config key 'exclusion_rule': {exclusion_rule!r} is not allowed; allowed values: 'paper', 'authors'"
        )
    groups = []
    for kind, named in classify_parameters(model).items():
        if not named:
            continue
        decay, adapt = EXCLUSION_RULES[exclusion_rule][kind]
        groups.append(
            {
                "params": named,
                "kind": kind,
                "apply_weight_decay": decay,
                "lars_adaptation": adapt,
                "weight_decay": weight_decay if decay else 0.0,
            }
        )
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return groups


# --------------------------------------------------------------------------------------------------
# Optimisers
# --------------------------------------------------------------------------------------------------


class LARS(torch.optim.Optimizer):
    """LARS as DINO's ``utils.LARS``, with per-group switches instead of DINO's ``p.ndim`` filter.

    For every parameter ``p`` with a gradient ``g`` in a group (lr, weight_decay wd, momentum m,
    trust_coefficient eta, lars_adaptation)::

        dp = g + wd * p
        if lars_adaptation:
            q = eta * |p| / |dp|   if |p| > 0 and |dp| > 0   else 1
            dp = q * dp
        mu = m * mu + dp           (mu starts at 0)
        p  = p - lr * mu

    A group without weight decay simply has ``weight_decay`` 0. Parameters without a gradient are
    skipped (their momentum is not updated), as in DINO.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 0.0,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        trust_coefficient: float = 0.001,
        lars_adaptation: bool = True,
    ) -> None:
        if lr < 0 or weight_decay < 0 or not 0 <= momentum < 1 or trust_coefficient <= 0:
            raise ValueError(
                f"invalid LARS settings: lr {lr}, weight_decay {weight_decay}, momentum {momentum}, "
                f"trust_coefficient {trust_coefficient}"
            )
        defaults = dict(
            lr=lr,
            weight_decay=weight_decay,
            momentum=momentum,
            trust_coefficient=trust_coefficient,
            lars_adaptation=lars_adaptation,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # The same maths for all tensors of a group at once (torch._foreach_*): one kernel per
        # operation instead of a dozen per parameter, which dominates a small network's step on a GPU.
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            updates = [p.grad for p in params]
            if group["weight_decay"] != 0:
                updates = torch._foreach_add(updates, params, alpha=group["weight_decay"])
            if group["lars_adaptation"]:
                param_norms = torch.stack(torch._foreach_norm(params))
                update_norms = torch.stack(torch._foreach_norm(updates))
                trust = torch.where(
                    (param_norms > 0) & (update_norms > 0),
                    group["trust_coefficient"] * param_norms / update_norms,
                    torch.ones_like(param_norms),
                )
            else:
                trust = torch.ones(len(params), device=params[0].device)
            momenta = []
            for p in params:
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                momenta.append(state["mu"])
            torch._foreach_mul_(momenta, group["momentum"])
            torch._foreach_addcmul_(momenta, updates, list(trust.unbind()))  # mu += q * dp
            torch._foreach_add_(params, momenta, alpha=-group["lr"])
        return loss


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """LARS or AdamW over :func:`param_groups` of ``model`` (backbone and heads: pass the module
    holding everything that trains, e.g. the student). The LR and weight decay set here are only
    initial values: call :meth:`Schedules.apply` before every step."""
    groups = param_groups(model, cfg.exclusion_rule, cfg.weight_decay)
    if cfg.name == "lars":
        return LARS(
            groups, lr=cfg.warmup_start_lr, momentum=cfg.momentum, trust_coefficient=cfg.trust_coefficient
        )
    # AdamW with torch's default betas (0.9, 0.999) and eps, as DINO (main_dino.py) uses it.
    return torch.optim.AdamW(groups, lr=cfg.warmup_start_lr)


@torch.no_grad()
def clip_gradients(model: nn.Module, max_norm: float) -> None:
    """DINO's ``utils.clip_gradients``: clip the gradient of *each parameter* to L2 norm ``max_norm``
    (not the global norm as ``torch.nn.utils.clip_grad_norm_``): ``g *= min(1, max_norm/(|g|+1e-6))``.
    No host synchronisation (DINO's version calls ``.item()`` per parameter to log the norms)."""
    for p in model.parameters():
        if p.grad is not None:
            coef = (max_norm / (torch.linalg.vector_norm(p.grad) + 1e-6)).clamp(max=1.0)
            p.grad.mul_(coef)


# --------------------------------------------------------------------------------------------------
# Schedules
# --------------------------------------------------------------------------------------------------


def cosine_schedule(
    base_value: float,
    final_value: float,
    epochs: int,
    steps_per_epoch: int,
    warmup_epochs: int = 0,
    warmup_start_value: float = 0.0,
) -> np.ndarray:
    """One value per step, exactly DINO's ``utils.cosine_scheduler`` (also SwAV's and SSLight's).

    Warm-up: ``np.linspace(warmup_start_value, base_value, W)`` over the ``W = warmup_epochs x
    steps_per_epoch`` first steps (the last warm-up step is ``base_value``); then, for ``i`` in
    ``0 .. T-1`` with ``T`` the remaining steps, ``final + 0.5 (base - final) (1 + cos(pi i / T))``
    (:func:`lowssl.schedules.cosine_decay`).
    (Written here rather than taken from timm: see the module docstring.)
    """
    if epochs < 1 or steps_per_epoch < 1:
        raise ValueError(f"need epochs >= 1 and steps_per_epoch >= 1, got {epochs}, {steps_per_epoch}")
    if not 0 <= warmup_epochs <= epochs:
        raise ConfigError(f"config key 'warmup_epochs': must be in [0, epochs={epochs}], got {warmup_epochs}")
    warmup_steps = warmup_epochs * steps_per_epoch
    warmup = np.linspace(warmup_start_value, base_value, warmup_steps) if warmup_steps > 0 else np.array([])
    steps = np.arange(epochs * steps_per_epoch - warmup_steps)
    cosine = cosine_decay(base_value, final_value, steps, max(len(steps), 1))
    schedule = np.concatenate((warmup, cosine))
    assert len(schedule) == epochs * steps_per_epoch
    return schedule


@dataclass(frozen=True)
class StepValues:
    lr: float
    weight_decay: float


@dataclass(frozen=True)
class Schedules:
    """Per-step values of the LR and the weight decay (a teacher's EMA momentum is its method's:
    ``MultiCropMethod.teacher_momentum``)."""

    lr: np.ndarray
    weight_decay: np.ndarray

    def __len__(self) -> int:
        return len(self.lr)

    def at(self, step: int) -> StepValues:
        """Values at global step ``step`` (0-based)."""
        if not 0 <= step < len(self):
            raise IndexError(f"step {step} is outside the schedule's {len(self)} steps")
        return StepValues(float(self.lr[step]), float(self.weight_decay[step]))

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> StepValues:
        """Write this step's LR and weight decay into ``optimizer`` and return them."""
        values = self.at(step)
        set_lr_and_weight_decay(optimizer, values.lr, values.weight_decay)
        return values


def set_lr_and_weight_decay(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float) -> None:
    """Every group gets ``lr``; groups with ``apply_weight_decay`` False keep weight decay 0 (a group
    without that key, e.g. one built by hand, is treated as decayed)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
        group["weight_decay"] = weight_decay if group.get("apply_weight_decay", True) else 0.0


def build_schedules(cfg: OptimConfig, epochs: int, steps_per_epoch: int, batch_size: int) -> Schedules:
    """The per-step schedules of a run of ``epochs`` x ``steps_per_epoch`` steps at global batch
    ``batch_size`` (all processes together): LR warm-up + cosine to ``cfg.min_lr`` (peak
    ``cfg.peak_lr(batch_size)``); weight decay cosine ``weight_decay -> weight_decay_end`` (constant
    when they are equal)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    lr = cosine_schedule(
        cfg.peak_lr(batch_size), cfg.min_lr, epochs, steps_per_epoch, cfg.warmup_epochs, cfg.warmup_start_lr
    )
    wd = cosine_schedule(cfg.weight_decay, cfg.weight_decay_end, epochs, steps_per_epoch)
    return Schedules(lr=lr, weight_decay=wd)


__all__ = [
    "EXCLUSION_RULES",
    "LARS",
    "OptimConfig",
    "Schedules",
    "StepValues",
    "build_optimizer",
    "build_schedules",
    "classify_parameters",
    "clip_gradients",
    "cosine_schedule",
    "is_depthwise_conv",
    "param_groups",
    "set_lr_and_weight_decay",
]
