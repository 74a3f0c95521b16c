"""The random draws of one view: its crop box (:mod:`pretrain.views.crop`) and its augmentation
parameters.

Every draw is from torch's global RNG, with the calls of DINO's reference pipeline (torchvision v1
transforms) in its order, so a seed gives the same crop boxes, flips, jitter factors and order,
greyscale, blur and solarize decisions as that pipeline (whose blur and solarize coins come from
Python's ``random``; here they come from torch too).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch

from lowssl.pretrain.views.crop import crop_box

if TYPE_CHECKING:
    from lowssl.pretrain.views.config import ViewRecipe


class ViewParams(NamedTuple):
    """Everything random about one view; ``None`` where the operation is not applied."""

    box: tuple[int, int, int, int]  # top, left, height, width
    flip: bool
    jitter: tuple[tuple[int, ...], float, float, float, float] | None  # order, b, c, s, h
    greyscale: bool
    blur_sigma: float | None
    solarize: bool


def sample_view(recipe: ViewRecipe, height: int, width: int) -> ViewParams:
    """Draws one view's parameters on an H x W image with the random calls of DINO's pipeline, in its
    order."""
    box = crop_box(height, width, recipe.scale, recipe.ratio, recipe.log_ratio)
    flip = torch.rand(1).item() < recipe.flip_p  # RandomHorizontalFlip
    jitter = None
    if not recipe.jitter_p < torch.rand(1).item():  # RandomApply([ColorJitter])
        order = tuple(torch.randperm(4).tolist())  # ColorJitter.get_params
        b, c, s, h = (torch.empty(1).uniform_(low, high).item() for low, high in recipe.jitter)
        jitter = (order, b, c, s, h)
    greyscale = torch.rand(1).item() < recipe.greyscale_p  # RandomGrayscale
    blur_sigma = None
    if torch.rand(1).item() <= recipe.blur_p:  # DINO's GaussianBlur: random() <= p, radius U(0.1, 2)
        blur_sigma = torch.empty(1).uniform_(*recipe.blur_sigma).item()
    solarize = recipe.solarize_p > 0 and torch.rand(1).item() < recipe.solarize_p  # DINO's Solarization
    return ViewParams(box, flip, jitter, greyscale, blur_sigma, solarize)
