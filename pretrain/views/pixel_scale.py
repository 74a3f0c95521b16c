"""The pixel-scale tool of the paper's Sec. 3.2.2.

:func:`pixel_scale_stats` estimates mean(PS_g / PS_l) (paper Eq. 1: PS = size^2 / crop area) by
Monte Carlo over the sampler's own crop sampling (:func:`pretrain.views.crop.crop_box`), and the
local size LC that brings it to 1 (``local_size: auto`` resolves to that LC). The command line
(``pretrain/views/__main__.py``)::

    python -m lowssl.pretrain.views pixel-scale --global-scale 0.3 1.0 --local-scale 0.05 0.3 --global-size 224
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from torch import Tensor

from lowssl.pretrain.views.crop import crop_box, log_ratio

# Monte Carlo defaults of the tool, also those that resolve ``local_size: auto``.
PIXEL_SCALE_SAMPLES = 20_000
PIXEL_SCALE_SEED = 0


class CropSizes(Protocol):
    """The fields of a ``views:`` config (:class:`pretrain.views.config.ViewsConfig`) the pixel scales
    depend on. A protocol, not that class: the config resolves ``local_size: auto`` with this module."""

    global_scale: tuple[float, float]
    local_scale: tuple[float, float]
    global_size: int
    local_size: int | Literal["auto"]
    ratio: tuple[float, float]


@dataclass(frozen=True)
class PixelScaleStats:
    """What :func:`pixel_scale_stats` measured; PS as in paper Eq. 1."""

    mean_ps_ratio: float  # mean(PS_g / PS_l) at local_size
    local_size: int  # the configured LC, or the matched one for local_size: auto
    matched_local_size: int  # integer LC with mean(PS_g / PS_l) closest to 1
    exact_local_size: float  # the real-valued LC with mean(PS_g / PS_l) = 1
    mean_ps_global: float
    mean_ps_local: float  # at local_size
    n_samples: int
    seed: int
    image_size: tuple[int, int]


def sample_crop_areas(
    scale: tuple[float, float], ratio: tuple[float, float], image_size: tuple[int, int], n: int
) -> Tensor:
    """Areas in pixels of ``n`` crops drawn with this scale and ratio range by the sampler's
    :func:`crop_box` (aspect-ratio rejection and its centre-crop fallback included) on an H x W image."""
    bounds = log_ratio(ratio)
    boxes = [crop_box(*image_size, scale, ratio, bounds) for _ in range(n)]
    return torch.tensor([h * w for _, _, h, w in boxes], dtype=torch.float64)


def pixel_scale_stats(
    cfg: CropSizes,
    image_size: tuple[int, int] | None = None,
    n_samples: int = PIXEL_SCALE_SAMPLES,
    seed: int = PIXEL_SCALE_SEED,
) -> PixelScaleStats:
    """Monte Carlo estimate of the pixel scales of paper Eq. 1 on an H x W image (default GC x GC).

    Draws ``n_samples`` global and ``n_samples`` local crops and averages PS_g / PS_l over all
    n^2 (global, local) pairs; the crops are independent, so every pair is a valid sample and
    mean_ij(PS_g,i / PS_l,j) = GC^2 / LC^2 * mean(A_l) * mean(1 / A_g) exactly, with less variance
    than n disjoint pairs. The ratio is 1 at LC* = GC * sqrt(mean(A_l) * mean(1 / A_g)). The
    global RNG is left untouched.
    """
    height, width = image_size if image_size is not None else (cfg.global_size, cfg.global_size)
    if height < 1 or width < 1:
        raise ValueError(f"image size must be >= 1 pixel per side, got {height} x {width}")
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    ratio = tuple(cfg.ratio)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        global_areas = sample_crop_areas(tuple(cfg.global_scale), ratio, (height, width), n_samples)
        local_areas = sample_crop_areas(tuple(cfg.local_scale), ratio, (height, width), n_samples)
    mean_inverse_global = (1 / global_areas).mean().item()
    mean_local = local_areas.mean().item()
    exact = cfg.global_size * math.sqrt(mean_local * mean_inverse_global)

    def ratio_at(lc: int) -> float:
        return cfg.global_size**2 / lc**2 * mean_local * mean_inverse_global

    candidates = {max(1, math.floor(exact)), max(1, math.ceil(exact))}
    matched = min(candidates, key=lambda lc: (abs(ratio_at(lc) - 1), lc))
    local_size = matched if cfg.local_size == "auto" else cfg.local_size
    return PixelScaleStats(
        mean_ps_ratio=ratio_at(local_size),
        local_size=local_size,
        matched_local_size=matched,
        exact_local_size=exact,
        mean_ps_global=cfg.global_size**2 * mean_inverse_global,
        mean_ps_local=local_size**2 * (1 / local_areas).mean().item(),
        n_samples=n_samples,
        seed=seed,
        image_size=(height, width),
    )
