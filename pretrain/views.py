"""Multi-crop views for DINO, SwAV and MoCo-v2*, and the pixel-scale tool of the paper's Sec. 3.2.2.

:class:`MultiCropViews` maps one image to ``[global 1, global 2, local 1, ..., local L]`` (facts.md
section 1, "View order"), each a normalised CHW float tensor, with the per-view augmentation of
facts.md section 1. It crops and resizes first, so the colour operations work on the small output,
keeps the views uint8 until the last step and converts to float and normalises once.

:func:`pixel_scale_stats` estimates mean(PS_g / PS_l) (paper Eq. 1: PS = size^2 / crop area) by
Monte Carlo over the sampler's own crop sampling, and the local size LC that brings it to 1::

    python -m pretrain.views pixel-scale --global-scale 0.3 1.0 --local-scale 0.05 0.3 --global-size 224
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as tnf
from PIL import Image
from torch import Tensor
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from lowssl.config import from_dict, require

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# DINO draws the blur as PIL's ImageFilter.GaussianBlur(radius=U(0.1, 2.0)); Pillow's "radius" is the
# Gaussian's standard deviation, so sigma ~ U(0.1, 2.0) here (facts.md section 1). The kernel spans
# +-3 sigma of the largest sigma (13 taps), in output pixels: the blur runs after the resize.
BLUR_SIGMA = (0.1, 2.0)
BLUR_KERNEL = 2 * math.ceil(3 * BLUR_SIGMA[1]) + 1

# Monte Carlo defaults of the pixel-scale tool, also used to resolve ``local_size: auto``.
PIXEL_SCALE_SAMPLES = 20_000
PIXEL_SCALE_SEED = 0


@dataclass(frozen=True, kw_only=True)
class ViewsConfig:
    """The ``views:`` section of a pre-training config (facts.md section 1 gives the recipes).

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


class _Recipe(NamedTuple):
    """Augmentation strengths; per-view probabilities are for (global 1, global 2, local)."""

    jitter: tuple[float, float, float, float]  # brightness, contrast, saturation, hue
    blur_p: tuple[float, float, float]
    solarize_p: tuple[float, float, float]


# facts.md section 1 (authors' configs, following DINO and SwAV), as are the constants below.
RECIPES = {
    "dino": _Recipe(jitter=(0.4, 0.4, 0.2, 0.1), blur_p=(1.0, 0.1, 0.5), solarize_p=(0.0, 0.2, 0.0)),
    "swav": _Recipe(jitter=(0.8, 0.8, 0.8, 0.2), blur_p=(0.5, 0.5, 0.5), solarize_p=(0.0, 0.0, 0.0)),
}
JITTER_P = 0.8
GREYSCALE_P = 0.2
FLIP_P = 0.5
SOLARIZE_THRESHOLD = 128


class SeparableGaussianBlur(v2.GaussianBlur):
    """torchvision's GaussianBlur (same sigma sampling, same kernel) run as two 1-D passes.

    torchvision convolves with the full 2-D kernel; two 1-D passes give the same result (to one grey
    level of rounding) about twice as fast on CPU. Expects uint8 CHW tensors.
    """

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return separable_gaussian_blur(inpt, self.kernel_size[0], params["sigma"][0])


def separable_gaussian_blur(image: Tensor, kernel_size: int, sigma: float) -> Tensor:
    """Gaussian blur of a uint8 (C, H, W) image with reflect padding, like ``F.gaussian_blur``."""
    # Reflect padding needs radius < side; views smaller than the kernel get a truncated kernel.
    radius = min(kernel_size // 2, image.shape[-1] - 1, image.shape[-2] - 1)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    weights = torch.exp(-0.5 * (offsets / sigma) ** 2)
    weights /= weights.sum()
    # Channels as the batch: a plain convolution is faster on CPU than a grouped one.
    x = tnf.pad(image.to(torch.float32).unsqueeze(1), (radius,) * 4, mode="reflect")
    x = tnf.conv2d(tnf.conv2d(x, weights.view(1, 1, 1, -1)), weights.view(1, 1, -1, 1))
    return x.squeeze(1).round_().clamp_(0, 255).to(image.dtype)


def random_resized_crop(cfg: ViewsConfig, size: int, scale: tuple[float, float]) -> v2.RandomResizedCrop:
    """The crop of every view; :func:`pixel_scale_stats` samples the same transform's parameters."""
    return v2.RandomResizedCrop(
        size,
        scale=scale,
        ratio=cfg.ratio,
        interpolation=v2.InterpolationMode(cfg.interpolation),
        antialias=True,
    )


def _view_transform(cfg: ViewsConfig, crop: v2.RandomResizedCrop, view: int) -> v2.Compose:
    """Augmentation of one view kind (0: global 1, 1: global 2, 2: local), in DINO's order."""
    recipe = RECIPES[cfg.augmentation]
    steps = [
        crop,
        v2.RandomHorizontalFlip(FLIP_P),
        v2.RandomApply([v2.ColorJitter(*recipe.jitter)], p=JITTER_P),
        v2.RandomGrayscale(GREYSCALE_P),
        v2.RandomApply([SeparableGaussianBlur(BLUR_KERNEL, BLUR_SIGMA)], p=recipe.blur_p[view]),
    ]
    if recipe.solarize_p[view] > 0:
        # Threshold 128 on 0..255 values: the views are still uint8 here.
        steps.append(v2.RandomSolarize(SOLARIZE_THRESHOLD, p=recipe.solarize_p[view]))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(cfg.mean, cfg.std)]
    return v2.Compose(steps)


class MultiCropViews:
    """Maps an RGB image (PIL, or a uint8 CHW tensor) to the list of views, in view order.

    Randomness comes from torch's global RNG only (as in torchvision's transforms): seeding torch
    before a call reproduces its views. ``local_size`` is the resolved LC (``auto`` resolved here, once).
    """

    def __init__(self, cfg: ViewsConfig) -> None:
        self.cfg = cfg
        self.local_size = resolve_local_size(cfg)
        self.global_crop = random_resized_crop(cfg, cfg.global_size, cfg.global_scale)
        self.local_crop = random_resized_crop(cfg, self.local_size, cfg.local_scale)
        local = _view_transform(cfg, self.local_crop, 2)
        self.transforms = [
            _view_transform(cfg, self.global_crop, 0),
            _view_transform(cfg, self.global_crop, 1),
            *([local] * cfg.n_local),
        ]

    def __call__(self, image: Image.Image | Tensor) -> list[Tensor]:
        pixels = _uint8_rgb(image)
        return [transform(pixels) for transform in self.transforms]


def _uint8_rgb(image: Image.Image | Tensor) -> Tensor:
    if isinstance(image, Image.Image):
        return F.pil_to_tensor(image if image.mode == "RGB" else image.convert("RGB"))
    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(
            f"expected a PIL image or a uint8 (C, H, W) tensor with 1 or 3 channels, got "
            f"{image.dtype} {tuple(image.shape)}"
        )
    return image.expand(3, -1, -1) if image.shape[0] == 1 else image


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
    """Areas in pixels of ``n`` crops drawn by ``crop``'s own parameter sampling (aspect-ratio
    rejection and its centre-crop fallback included) on an H x W image."""
    # A zero-stride stand-in: make_params only reads the image size.
    stand_in = torch.empty(1, dtype=torch.uint8).expand(1, *image_size)
    params = [crop.make_params([stand_in]) for _ in range(n)]
    return torch.tensor([p["height"] * p["width"] for p in params], dtype=torch.float64)


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
