"""The interface shared by the multi-crop SSL methods (DINO, SwAV, MoCo-v2*).

Views arrive as a list of batched tensors in the order [global 1, global 2, local 1, ..., local L]
(docs/recipes.md, "View sampling"), each (B, C, H, W); the globals share one resolution and the
locals another. The training loop calls, once per step::

    method.normalize_prototypes()            # SwAV only; a no-op elsewhere
    out = method(views, epoch)               # MethodOutput(loss, terms)
    out.loss.backward()
    method.cancel_frozen_gradients(epoch)    # DINO last layer / SwAV prototypes in epoch index 0
    optimizer.step()
    method.update_teacher(method.teacher_momentum(step, total_steps))

Only ``requires_grad`` parameters are trained: teachers / key encoders are frozen copies.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

# Every method in the paper uses two global views; their outputs come first in view order.
NUM_GLOBAL_VIEWS = 2


@dataclass
class MethodOutput:
    loss: Tensor
    # Always "loss", "loss_gg", "loss_gl" (per-pair means), "alpha" (the weight used), plus
    # method-specific monitoring values.
    terms: dict[str, float]


@dataclass(frozen=True)
class RunLayout:
    """How one optimiser step's batch is spread over the processes; a method sizes its per-process
    state from it (SwAV's queue)."""

    global_batch: int | None = None  # images per step over all processes; None = not known
    n_processes: int = 1


def multicrop_forward(backbone: nn.Module, head: nn.Module, views: Sequence[Tensor]) -> Tensor:
    """Head outputs of all views, concatenated along the batch in view order.

    Like DINO's MultiCropWrapper: one backbone pass per run of consecutive views with the same
    resolution (so the globals and the locals are each one batch), then one head pass on all
    features, so BatchNorm in the head sees every view.
    """
    features = [
        backbone(torch.cat(list(group)))
        for _, group in itertools.groupby(views, key=lambda view: tuple(view.shape[-2:]))
    ]
    return head(torch.cat(features))


def check_views(views: Sequence[Tensor]) -> int:
    """Validate the view list; returns the per-view batch size."""
    if len(views) < NUM_GLOBAL_VIEWS:
        raise ValueError(
            f"expected {NUM_GLOBAL_VIEWS} global views followed by locals, got {len(views)} views"
        )
    batch = views[0].shape[0]
    if any(view.shape[0] != batch for view in views):
        raise ValueError(f"all views need the same batch size, got {[view.shape[0] for view in views]}")
    return batch


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sum over processes in place (identity on one process)."""
    if is_distributed():
        dist.all_reduce(tensor)
    return tensor


def output(loss: Tensor, monitor: dict[str, Tensor | float]) -> MethodOutput:
    """MethodOutput with the monitored tensors turned into floats through one device sync."""
    tensors = {name: value.detach().float() for name, value in monitor.items() if isinstance(value, Tensor)}
    values = torch.stack([loss.detach().float(), *tensors.values()]).cpu().tolist()
    terms = {name: float(value) for name, value in monitor.items() if not isinstance(value, Tensor)}
    terms.update(zip(["loss", *tensors], values, strict=True))
    return MethodOutput(loss, terms)


class MultiCropMethod(nn.Module):
    """Base class: a student backbone (``student_backbone``, torchvision/timm parameter names) + heads."""

    name: str
    config_class: type

    def __init__(self, backbone: nn.Module, cfg, layout: RunLayout | None = None) -> None:
        super().__init__()
        self.student_backbone = backbone
        self.cfg = cfg
        self.layout = layout if layout is not None else RunLayout(n_processes=world_size())

    def forward(self, views: Sequence[Tensor], epoch: int) -> MethodOutput:
        raise NotImplementedError

    def forward_networks(self, views: Sequence[Tensor]) -> tuple[Tensor, Tensor | None]:
        """The network passes of one step, without the loss: student outputs (with gradients) and
        teacher / key-encoder outputs (without; None for methods without one). ``forward`` starts with
        it, and benchmarks/pretrain_step.py times it as the limit a step's overhead is measured against."""
        raise NotImplementedError

    def pair_counts(self, n_local: int) -> tuple[int, int]:
        """(P_gg, P_gl) for 2 globals and ``n_local`` locals, as this method defines its pairs."""
        raise NotImplementedError

    def student_teacher_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(student module, EMA copy) pairs that update_teacher averages; none by default."""
        return []

    def teacher_momentum(self, step: int, total_steps: int) -> float:
        """EMA momentum for update_teacher at this optimiser step; 1.0 (no change) without a teacher."""
        return 1.0

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """teacher <- momentum * teacher + (1 - momentum) * student, parameters only (as DINO / MoCo)."""
        for student, teacher in self.student_teacher_pairs():
            teacher_params = list(teacher.parameters())
            student_params = [p.detach() for p in student.parameters()]
            if len(teacher_params) != len(student_params):
                raise RuntimeError("teacher and student have different parameter lists")
            # teacher + (1 - momentum) * (student - teacher): the same average in one pass over memory.
            torch._foreach_lerp_(teacher_params, student_params, 1 - momentum)

    def config_changes(self, configured) -> str | None:
        """A line saying what the method changed of ``configured`` (the config it was built from) to
        fit the run, as ``self.cfg`` trains it (SwAV's queue, shortened to whole global batches); None
        when nothing was changed. The training loop says it once, after building the method."""
        return None

    def normalize_prototypes(self) -> None:
        """Called before forward; only methods with prototypes (SwAV) override it."""

    def cancel_frozen_gradients(self, epoch: int) -> None:
        """Called between backward and the optimiser step; only methods with frozen layers override it."""


def freeze_in_first_epochs(module: nn.Module, epoch: int, n_epochs: int) -> None:
    """Drop ``module``'s gradients while ``epoch < n_epochs`` (DINO's cancel_gradients_last_layer):
    grad None also keeps weight decay and momentum away from it."""
    if epoch < n_epochs:
        for param in module.parameters():
            param.grad = None
