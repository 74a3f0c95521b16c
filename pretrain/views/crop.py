"""The crop box of a RandomResizedCrop, drawn as torchvision draws it.

The one geometry the view sampler (:mod:`pretrain.views.sampler`), the plan's recipes
(:mod:`pretrain.views.config`) and the pixel-scale tool (:mod:`pretrain.views.pixel_scale`) share; it
needs none of them.
"""

from __future__ import annotations

import math

import torch


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
