"""The random draws of one view: its crop box and its augmentation parameters.

Every draw is from torch's global RNG, with the calls of DINO's reference pipeline (torchvision v1
transforms) in its order, so a seed gives the same crop boxes, flips, jitter factors and order,
greyscale, blur and solarize decisions as that pipeline (whose blur and solarize coins come from
Python's ``random``; here they come from torch too).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple

import torch

if TYPE_CHECKING:
    from pretrain.views.config import ViewRecipe


def log_ratio(ratio: tuple[float, float]) -> tuple[float, float]:
    """The aspect-ratio bounds as torchvision samples them (log of float32 values, in float32)."""
    low, high = torch.log(torch.tensor(ratio)).tolist()
    return low, high


def crop_box(
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    log_bounds: tuple[float, float] | None = None,
) -> tuple[int, int, int, int]:
    """(top, left, crop height, crop width) of a RandomResizedCrop on an H x W image.

    torchvision's own parameter sampling (``RandomResizedCrop.get_params`` of v1, ``make_params`` of
    v2), line by line: the same torch RNG calls in the same order, so the same seed gives the same box,
    with the same 10 aspect-ratio rejection tries and the same centre-crop fallback. ``log_bounds`` is
    ``log_ratio(ratio)``, precomputed by callers in a loop.
    """
    low, high = log_bounds if log_bounds is not None else log_ratio(ratio)
    area = height * width
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1]).item()
        aspect_ratio = torch.empty(1).uniform_(low, high).exp_().item()
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, size=(1,)).item())
            left = int(torch.randint(0, width - w + 1, size=(1,)).item())
            return top, left, h, w
    in_ratio = float(width) / float(height)  # fallback: central crop
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


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
