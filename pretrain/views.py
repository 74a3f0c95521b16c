"""Multi-crop views for DINO, SwAV and MoCo-v2*, and the pixel-scale tool of the paper's Sec. 3.2.2.

:class:`MultiCropViews` maps one image to ``[global 1, global 2, local 1, ..., local L]``
(docs/recipes.md, "View sampling"), each a normalised CHW float tensor, with the per-view augmentation
of docs/recipes.md, "Per-view augmentation", drawn exactly as DINO's reference pipeline draws it
(torchvision v1 transforms on PIL images): the same random calls in the same order, so a seed gives
the same crop boxes, flips, jitter factors and order, greyscale, blur and solarize decisions as that
pipeline (whose blur and solarize coins come from Python's ``random``; here every draw is from
torch's RNG).

Speed (3.3-4.6x the reference per CPU core, ``python -m benchmarks.augmentation``): the image is
converted to a uint8 array once; each view is one crop-and-resize straight into a uint8 HWC array
(torch's antialiased uint8 resize, the Pillow-SIMD algorithm: mean |d| < 0.05 grey levels from PIL's
bicubic crop + resize and 3-6x faster. PIL's single ``resize(box=, reducing_gap=)`` call stays 2-6x
slower at every gap: its integer pre-reduction engages only where a crop shrinks by >= 2 gaps, rare
for ~500x375 images, and gap 1, the fastest, moves pixels by up to ~1 grey level on average from the
plain bicubic resize (gap 2 by <= 0.3)), then the colour operations run on that small
array in OpenCV, and one conversion makes the normalised float CHW tensor. How each operation relates
to DINO's PIL operation (checked in tests/test_views_distribution.py):

- brightness, contrast: a 256-entry table evaluating PIL's ``Image.blend`` formula (float32, truncated):
  identical to ``ImageEnhance`` (contrast's grey mean from OpenCV's luma, within one level of PIL's L);
- saturation: PIL's blend with the luma image via ``cv2.addWeighted``: identical but for one grey
  level in about 0.2% of the values;
- hue: OpenCV's 8-bit HSV (256 hue steps a turn) with the hue channel shifted by round(256 h). PIL's
  8-bit HSV (255 steps, truncated) differs from it by about one grey level on average; both are as close
  to the exact (float) hue rotation (mean |d| 0.48 OpenCV, 0.56 PIL), and OpenCV is 9x faster;
- greyscale: OpenCV's luma (ITU-R 601-2, as PIL's ``convert("L")``), within one level of PIL's;
- blur: a true Gaussian of sigma ~ U(0.1, 2.0) (OpenCV, kernel +-3 sigma, edge pixels repeated as PIL
  does). DINO's PIL ``GaussianBlur(radius=sigma)`` approximates the same Gaussian with three box blurs
  (mean |d| about 0.6 grey levels);
- solarize: PIL's table (values >= 128 inverted).

OpenCV runs on one thread during a call (set and restored): the views are small, its thread pool only
adds hand-off cost, and in DataLoader workers it would oversubscribe the cores.

:func:`pixel_scale_stats` estimates mean(PS_g / PS_l) (paper Eq. 1: PS = size^2 / crop area) by
Monte Carlo over the sampler's own crop sampling (:func:`crop_box`), and the local size LC that
brings it to 1::

    python -m pretrain.views pixel-scale --global-scale 0.3 1.0 --local-scale 0.05 0.3 --global-size 224
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import cv2
import numpy as np
import torch
import torch.nn.functional as tnf
from PIL import Image
from torch import Tensor
from torchvision.transforms import v2

from lowssl.config import from_dict, require

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# DINO draws the blur as PIL's ImageFilter.GaussianBlur(radius=U(0.1, 2.0)); Pillow's "radius" is the
# Gaussian's standard deviation, so sigma ~ U(0.1, 2.0) here (docs/recipes.md, "Per-view augmentation").
# The kernel spans +-3 sigma (13 taps at the largest sigma), in output pixels: the blur runs after the
# resize.
BLUR_SIGMA = (0.1, 2.0)
BLUR_KERNEL = 2 * math.ceil(3 * BLUR_SIGMA[1]) + 1

# Monte Carlo defaults of the pixel-scale tool, also used to resolve ``local_size: auto``.
PIXEL_SCALE_SAMPLES = 20_000
PIXEL_SCALE_SEED = 0


@dataclass(frozen=True, kw_only=True)
class ViewsConfig:
    """The ``views:`` section of a pre-training config (docs/recipes.md, "Baseline and ours", gives the
    recipes).

    Scales are fractions of the image area: global crops from ``global_scale`` = (S_g, 1.0), local
    crops from ``local_scale`` = (s_min, S_l) (paper Sec. 3.2.1). ``local_size: auto`` picks the LC
    whose mean(PS_g / PS_l) is closest to 1 (paper Sec. 3.2.2), see :func:`resolve_local_size`.
    """

    global_scale: tuple[float, float]
    local_scale: tuple[float, float]
    global_size: int = 224
    local_size: int | Literal["auto"]
    n_global: int = 2
    n_local: int
    augmentation: Literal["dino", "swav"] = "dino"  # MoCo-v2* uses the dino variant
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    interpolation: Literal["bicubic", "bilinear"] = "bicubic"
    # Gaussian blur sigma range in output pixels (U(0.1, 2.0) at 224 px: docs/recipes.md, "Per-view
    # augmentation"). Presets with smaller crops scale it with the crop size, as they scale the crop
    # sizes themselves.
    blur_sigma: tuple[float, float] = BLUR_SIGMA
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        for key in ("global_scale", "local_scale"):
            low, high = getattr(self, key)
            require(
                0 < low <= high <= 1,
                key,
                f"must be (min, max) fractions of the image area with 0 < min <= max <= 1, got ({low}, {high})",
            )
        require(
            self.local_scale[1] <= self.global_scale[1],
            "local_scale",
            f"max {self.local_scale[1]} exceeds global_scale max {self.global_scale[1]}; "
            "local crops cannot be larger than global crops",
        )
        require(
            isinstance(self.global_size, int) and self.global_size >= 1,
            "global_size",
            f"must be an integer >= 1 (pixels), got {self.global_size!r}",
        )
        require(
            self.local_size == "auto" or (isinstance(self.local_size, int) and self.local_size >= 1),
            "local_size",
            f"must be an integer >= 1 (pixels) or 'auto', got {self.local_size!r}",
        )
        require(
            self.n_global == 2,
            "n_global",
            f"must be 2 (DINO, SwAV and MoCo-v2* are defined for two global views), got {self.n_global}",
        )
        require(self.n_local >= 0, "n_local", f"must be >= 0, got {self.n_local}")
        require(
            0 < self.ratio[0] <= self.ratio[1],
            "ratio",
            f"must be (min, max) aspect ratios with 0 < min <= max, got {self.ratio}",
        )
        require(all(s > 0 for s in self.std), "std", f"every value must be > 0, got {self.std}")
        require(
            0 < self.blur_sigma[0] <= self.blur_sigma[1] <= BLUR_SIGMA[1],
            "blur_sigma",
            f"must be (min, max) with 0 < min <= max <= {BLUR_SIGMA[1]} (pixels), got {self.blur_sigma}",
        )


class _Recipe(NamedTuple):
    """Augmentation strengths; per-view probabilities are for (global 1, global 2, local)."""

    jitter: tuple[float, float, float, float]  # brightness, contrast, saturation, hue
    blur_p: tuple[float, float, float]
    solarize_p: tuple[float, float, float]


# docs/recipes.md, "Per-view augmentation" (authors' configs, following DINO and SwAV), as are the
# constants below.
RECIPES = {
    "dino": _Recipe(jitter=(0.4, 0.4, 0.2, 0.1), blur_p=(1.0, 0.1, 0.5), solarize_p=(0.0, 0.2, 0.0)),
    "swav": _Recipe(jitter=(0.8, 0.8, 0.8, 0.2), blur_p=(0.5, 0.5, 0.5), solarize_p=(0.0, 0.0, 0.0)),
}
JITTER_P = 0.8
GREYSCALE_P = 0.2
FLIP_P = 0.5
SOLARIZE_THRESHOLD = 128


def jitter_ranges(strengths: tuple[float, float, float, float]) -> tuple[tuple[float, float], ...]:
    """torchvision's ColorJitter ranges: brightness, contrast and saturation U[max(0, 1 - x), 1 + x],
    hue U[-h, h]."""
    *factors, hue = strengths
    return (*((max(0.0, 1 - x), 1 + x) for x in factors), (-hue, hue))


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


@dataclass(frozen=True)
class ViewRecipe:
    """The augmentation of one view kind (global 1, global 2 or local), in DINO's order: crop, flip,
    colour jitter (p 0.8, the four operations in a random order), greyscale, blur, solarize."""

    size: int
    scale: tuple[float, float]
    ratio: tuple[float, float]
    interpolation: str
    jitter: tuple[tuple[float, float], ...]  # brightness, contrast, saturation, hue ranges
    blur_p: float
    solarize_p: float  # 0: no solarize step (and no draw), as in DINO's global 1 and local views
    flip_p: float = FLIP_P
    jitter_p: float = JITTER_P
    greyscale_p: float = GREYSCALE_P
    blur_sigma: tuple[float, float] = BLUR_SIGMA
    solarize_threshold: int = SOLARIZE_THRESHOLD

    def __post_init__(self) -> None:
        object.__setattr__(self, "_log_ratio", log_ratio(self.ratio))

    def sample(self, height: int, width: int) -> ViewParams:
        """Draws the view's parameters with the random calls of DINO's pipeline, in its order."""
        box = crop_box(height, width, self.scale, self.ratio, self._log_ratio)
        flip = torch.rand(1).item() < self.flip_p  # RandomHorizontalFlip
        jitter = None
        if not self.jitter_p < torch.rand(1).item():  # RandomApply([ColorJitter])
            order = tuple(torch.randperm(4).tolist())  # ColorJitter.get_params
            b, c, s, h = (torch.empty(1).uniform_(low, high).item() for low, high in self.jitter)
            jitter = (order, b, c, s, h)
        greyscale = torch.rand(1).item() < self.greyscale_p  # RandomGrayscale
        blur_sigma = None
        if torch.rand(1).item() <= self.blur_p:  # DINO's GaussianBlur: random() <= p, radius U(0.1, 2)
            blur_sigma = torch.empty(1).uniform_(*self.blur_sigma).item()
        solarize = self.solarize_p > 0 and torch.rand(1).item() < self.solarize_p  # DINO's Solarization
        return ViewParams(box, flip, jitter, greyscale, blur_sigma, solarize)


# Tables for the colour operations (see the module docstring).
_LEVELS = np.arange(256, dtype=np.float32)
# One table per hue shift (in 1/256 turns) for an HSV array: hue shifted, saturation and value kept.
_HUE_LUTS = np.stack(
    [
        np.stack([(np.arange(256) + shift) % 256, np.arange(256), np.arange(256)], axis=-1)
        for shift in range(256)
    ]
).astype(np.uint8)[:, :, None, :]


def _blend_lut(base: float, factor: float) -> np.ndarray:
    """PIL's ``Image.blend(constant base, image, factor)`` as a table: base + factor * (x - base) in
    float32, clipped to 0..255 and truncated, as Pillow's C code computes it."""
    base32 = np.float32(base)
    values = base32 + np.float32(factor) * (_LEVELS - base32)
    return np.clip(values, 0, 255).astype(np.uint8)


def _luma(pixels: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY)


def adjust_brightness(pixels: np.ndarray, factor: float) -> np.ndarray:
    return cv2.LUT(pixels, _blend_lut(0.0, factor))


def adjust_contrast(pixels: np.ndarray, factor: float) -> np.ndarray:
    mean = int(cv2.mean(_luma(pixels))[0] + 0.5)  # PIL ImageEnhance.Contrast's rounded grey mean
    return cv2.LUT(pixels, _blend_lut(mean, factor))


def adjust_saturation(pixels: np.ndarray, factor: float) -> np.ndarray:
    grey = cv2.cvtColor(_luma(pixels), cv2.COLOR_GRAY2RGB)
    # addWeighted rounds; -0.4999 makes it truncate as PIL's blend does.
    return cv2.addWeighted(pixels, factor, grey, 1.0 - factor, -0.4999)


def adjust_hue(pixels: np.ndarray, factor: float) -> np.ndarray:
    hsv = cv2.cvtColor(pixels, cv2.COLOR_RGB2HSV_FULL)
    cv2.LUT(hsv, _HUE_LUTS[round(factor * 256) % 256], dst=hsv)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL, dst=hsv)


def greyscale(pixels: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(_luma(pixels), cv2.COLOR_GRAY2RGB)


def gaussian_blur(pixels: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of a uint8 (H, W, C) array, kernel +-3 sigma, edge pixels repeated (as PIL)."""
    return cv2.GaussianBlur(pixels, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REPLICATE)


def solarize(pixels: np.ndarray, threshold: int = SOLARIZE_THRESHOLD) -> np.ndarray:
    """PIL's ``ImageOps.solarize``: values >= threshold inverted."""
    return cv2.LUT(pixels, np.where(_LEVELS < threshold, _LEVELS, 255 - _LEVELS).astype(np.uint8))


_JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def resized_crop(pixels: Tensor, box: tuple[int, int, int, int], size: int, interpolation: str) -> np.ndarray:
    """Crop ``box`` of a (1, 3, H, W) uint8 tensor resized to size x size, as a uint8 (size, size, 3) array.

    torch's antialiased uint8 resize (the Pillow-SIMD algorithm, within a grey level of PIL's
    ``resize``) writes straight into the array through a channels-last output: no float copy and no
    layout conversion. Falls back to ``F.interpolate`` if the private op is missing.
    """
    top, left, height, width = box
    crop = pixels[:, :, top : top + height, left : left + width]
    out = np.empty((size, size, 3), dtype=np.uint8)
    op = _AA_RESIZE.get(interpolation)
    if op is not None:
        op(crop, [size, size], False, None, None, out=torch.from_numpy(out).permute(2, 0, 1).unsqueeze(0))
    else:
        resized = tnf.interpolate(crop, size=(size, size), mode=interpolation, antialias=True)
        out[...] = resized[0].permute(1, 2, 0).numpy()
    return out


def _aa_resize_ops() -> dict[str, Any]:
    ops = {}
    for mode in ("bicubic", "bilinear"):
        with contextlib.suppress(AttributeError, RuntimeError):
            ops[mode] = getattr(torch.ops.aten, f"_upsample_{mode}2d_aa").out
    return ops


_AA_RESIZE = _aa_resize_ops()


def augment(pixels: np.ndarray, params: ViewParams, threshold: int = SOLARIZE_THRESHOLD) -> np.ndarray:
    """Flip, colour jitter, greyscale, blur and solarize of a uint8 (H, W, 3) array, in DINO's order."""
    if params.flip:
        pixels = cv2.flip(pixels, 1)
    if params.jitter is not None:
        order, *factors = params.jitter
        for index in order:
            pixels = _JITTER_OPS[index](pixels, factors[index])
    if params.greyscale:
        pixels = greyscale(pixels)
    if params.blur_sigma is not None:
        pixels = gaussian_blur(pixels, params.blur_sigma)
    if params.solarize:
        pixels = solarize(pixels, threshold)
    return pixels


@contextlib.contextmanager
def one_opencv_thread() -> Iterator[None]:
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(threads)


def random_resized_crop(cfg: ViewsConfig, size: int, scale: tuple[float, float]) -> v2.RandomResizedCrop:
    """The crop of every view as a torchvision transform (size, scale, ratio, interpolation). The
    sampler draws its boxes with :func:`crop_box`, the same sampling, as :func:`sample_crop_areas` does."""
    return v2.RandomResizedCrop(
        size,
        scale=scale,
        ratio=cfg.ratio,
        interpolation=v2.InterpolationMode(cfg.interpolation),
        antialias=True,
    )


def view_recipes(cfg: ViewsConfig, local_size: int) -> list[ViewRecipe]:
    """One recipe per view, in view order: global 1, global 2, then the locals."""
    recipe = RECIPES[cfg.augmentation]
    jitter = jitter_ranges(recipe.jitter)

    def kind(index: int, size: int, scale: tuple[float, float]) -> ViewRecipe:
        return ViewRecipe(
            size=size,
            scale=tuple(scale),
            ratio=tuple(cfg.ratio),
            interpolation=cfg.interpolation,
            jitter=jitter,
            blur_p=recipe.blur_p[index],
            solarize_p=recipe.solarize_p[index],
            blur_sigma=tuple(cfg.blur_sigma),
        )

    local = kind(2, local_size, cfg.local_scale)
    return [kind(0, cfg.global_size, cfg.global_scale), kind(1, cfg.global_size, cfg.global_scale)] + [
        local
    ] * cfg.n_local


class MultiCropViews:
    """Maps an RGB image (PIL, or a uint8 CHW tensor) to the list of views, in view order.

    Randomness comes from torch's global RNG only: seeding torch before a call reproduces its views.
    ``local_size`` is the resolved LC (``auto`` resolved here, once). ``recipes`` holds the per-view
    augmentation; ``global_crop`` and ``local_crop`` describe the crops as torchvision transforms.
    """

    def __init__(self, cfg: ViewsConfig) -> None:
        self.cfg = cfg
        self.local_size = resolve_local_size(cfg)
        self.global_crop = random_resized_crop(cfg, cfg.global_size, cfg.global_scale)
        self.local_crop = random_resized_crop(cfg, self.local_size, cfg.local_scale)
        self.recipes = view_recipes(cfg, self.local_size)
        std = torch.tensor(cfg.std).view(3, 1, 1)
        self._scale = 1 / (255 * std)
        self._shift = torch.tensor(cfg.mean).view(3, 1, 1) / std

    def __call__(self, image: Image.Image | Tensor) -> list[Tensor]:
        pixels = uint8_rgb(image)
        height, width = pixels.shape[-2:]
        with one_opencv_thread():
            return [self._view(pixels, recipe, recipe.sample(height, width)) for recipe in self.recipes]

    def _view(self, pixels: Tensor, recipe: ViewRecipe, params: ViewParams) -> Tensor:
        view = augment(
            resized_crop(pixels, params.box, recipe.size, recipe.interpolation),
            params,
            recipe.solarize_threshold,
        )
        return self.normalise(view)

    def normalise(self, view: np.ndarray) -> Tensor:
        """uint8 (H, W, 3) -> normalised float (3, H, W): one layout-changing conversion, then in place."""
        chw = torch.from_numpy(view).permute(2, 0, 1).to(torch.float32, memory_format=torch.contiguous_format)
        return chw.mul_(self._scale).sub_(self._shift)


def uint8_rgb(image: Image.Image | Tensor) -> Tensor:
    """A (1, 3, H, W) uint8 tensor of the image (channels-last strides for PIL input)."""
    if isinstance(image, Image.Image):
        array = np.array(image if image.mode == "RGB" else image.convert("RGB"))
        return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0)
    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(
            f"expected a PIL image or a uint8 (C, H, W) tensor with 1 or 3 channels, got "
            f"{image.dtype} {tuple(image.shape)}"
        )
    return (image.expand(3, -1, -1) if image.shape[0] == 1 else image).unsqueeze(0)


def collate_views(batch: Sequence[tuple[list[Tensor], Any]]) -> tuple[list[Tensor], Tensor]:
    """DataLoader collate: [(views, label), ...] -> ([one (B, C, H, W) tensor per view], labels)."""
    views, labels = zip(*batch, strict=True)
    return [torch.stack(same_view) for same_view in zip(*views, strict=True)], torch.as_tensor(labels)


def resolution_groups(views: Sequence[Tensor]) -> list[tuple[int, int]]:
    """(start, end) ranges of consecutive views with equal resolution: one backbone pass each,
    as DINO's MultiCropWrapper does (end is exclusive)."""
    groups, start = [], 0
    for _, group in itertools.groupby(views, key=lambda view: tuple(view.shape[-2:])):
        end = start + sum(1 for _ in group)
        groups.append((start, end))
        start = end
    return groups


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


def sample_crop_areas(crop: v2.RandomResizedCrop, image_size: tuple[int, int], n: int) -> Tensor:
    """Areas in pixels of ``n`` crops drawn with ``crop``'s scale and ratio by the sampler's
    :func:`crop_box` (aspect-ratio rejection and its centre-crop fallback included) on an H x W image."""
    # crop_box is the sampler's own sampling and draws exactly what torchvision's make_params draws.
    scale, ratio = tuple(crop.scale), tuple(crop.ratio)
    bounds = log_ratio(ratio)
    boxes = [crop_box(*image_size, scale, ratio, bounds) for _ in range(n)]
    return torch.tensor([h * w for _, _, h, w in boxes], dtype=torch.float64)


def pixel_scale_stats(
    cfg: ViewsConfig,
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
    # The sizes passed here do not matter: crop parameters depend only on the scale and ratio ranges.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        global_areas = sample_crop_areas(
            random_resized_crop(cfg, 1, cfg.global_scale), (height, width), n_samples
        )
        local_areas = sample_crop_areas(
            random_resized_crop(cfg, 1, cfg.local_scale), (height, width), n_samples
        )
    mean_inverse_global = (1 / global_areas).mean().item()
    mean_local = local_areas.mean().item()
    exact = cfg.global_size * math.sqrt(mean_local * mean_inverse_global)

    def ratio(lc: int) -> float:
        return cfg.global_size**2 / lc**2 * mean_local * mean_inverse_global

    candidates = {max(1, math.floor(exact)), max(1, math.ceil(exact))}
    matched = min(candidates, key=lambda lc: (abs(ratio(lc) - 1), lc))
    local_size = matched if cfg.local_size == "auto" else cfg.local_size
    return PixelScaleStats(
        mean_ps_ratio=ratio(local_size),
        local_size=local_size,
        matched_local_size=matched,
        exact_local_size=exact,
        mean_ps_global=cfg.global_size**2 * mean_inverse_global,
        mean_ps_local=local_size**2 * (1 / local_areas).mean().item(),
        n_samples=n_samples,
        seed=seed,
        image_size=(height, width),
    )


def resolve_local_size(cfg: ViewsConfig) -> int:
    """LC in pixels. ``auto`` is deterministic: the matched LC of :func:`pixel_scale_stats` on a
    square GC x GC image with the default sample count and seed (PIXEL_SCALE_SAMPLES, PIXEL_SCALE_SEED)."""
    return cfg.local_size if cfg.local_size != "auto" else pixel_scale_stats(cfg).matched_local_size


def _pixel_scale_command(args: argparse.Namespace) -> str:
    cfg = from_dict(
        ViewsConfig,
        {
            "global_scale": args.global_scale,
            "local_scale": args.local_scale,
            "global_size": args.global_size,
            "local_size": "auto" if args.local_size is None else args.local_size,
            "n_local": 0,  # pixel scales do not depend on how many views are drawn
        },
    )
    stats = pixel_scale_stats(
        cfg, tuple(args.image_size) if args.image_size else None, args.samples, args.seed
    )
    height, width = stats.image_size
    summary = [
        f"pixel scale PS = size^2 / crop area (paper Eq. 1); {stats.n_samples} global and "
        f"{stats.n_samples} local crops on a {height} x {width} image, seed {stats.seed}",
        f"  global crops: scale {cfg.global_scale} -> {cfg.global_size} px, mean PS_g = {stats.mean_ps_global:.4f}",
        f"  local crops:  scale {cfg.local_scale} -> {stats.local_size} px, mean PS_l = {stats.mean_ps_local:.4f}",
        f"  mean(PS_g / PS_l) at LC = {stats.local_size}: {stats.mean_ps_ratio:.4f}",
        f"  matched LC (mean ratio closest to 1): {stats.matched_local_size} (exact {stats.exact_local_size:.2f})",
        json.dumps(
            {"mean_ps_ratio": round(stats.mean_ps_ratio, 6), "matched_local_size": stats.matched_local_size}
        ),
    ]
    return "\n".join(summary)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pretrain.views", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    pixel = commands.add_parser(
        "pixel-scale",
        help="mean(PS_g / PS_l) and the matched local crop size (paper Sec. 3.2.2)",
        description="The last line printed is a JSON object {mean_ps_ratio, matched_local_size}; without "
        "--local-size the ratio is reported at the matched local size.",
    )
    pixel.add_argument("--global-scale", type=float, nargs=2, required=True, metavar=("MIN", "MAX"))
    pixel.add_argument("--local-scale", type=float, nargs=2, required=True, metavar=("MIN", "MAX"))
    pixel.add_argument("--global-size", type=int, default=224)
    pixel.add_argument("--local-size", type=int, default=None)
    pixel.add_argument(
        "--image-size",
        type=int,
        nargs=2,
        default=None,
        metavar=("H", "W"),
        help="default: a square image of the global size",
    )
    pixel.add_argument("--samples", type=int, default=PIXEL_SCALE_SAMPLES, help="crops of each kind")
    pixel.add_argument("--seed", type=int, default=PIXEL_SCALE_SEED)
    args = parser.parse_args(argv)
    try:
        print(_pixel_scale_command(args))
    except ValueError as error:  # ConfigError is a ValueError
        pixel.error(str(error))
    return 0


if __name__ == "__main__":
    sys.exit(main())
