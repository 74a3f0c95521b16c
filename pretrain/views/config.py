"""The ``views:`` config and the view plan resolved from it once, which every backend consumes.

:class:`ViewsConfig` is what a YAML config says; :func:`resolve_views` turns it into a :class:`ViewPlan`:
the resolved local size (``local_size: auto`` becomes a pixel count here, and only here) and one
:class:`ViewRecipe` per view kind (global 1, global 2, local) with every parameter of its crop and
augmentation (docs/recipes.md, "View sampling" and "Per-view augmentation"). The CPU sampler
(:mod:`pretrain.views.cpu`), the loader and device halves (:mod:`pretrain.views.gpu`) and DINO's
reference pipeline (:mod:`pretrain.views.reference`) all read the plan, never the config.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Literal, NamedTuple

from lowssl.config import require
from lowssl.pretrain.views.crop import log_ratio
from lowssl.pretrain.views.pixel_scale import pixel_scale_stats
from lowssl.transforms import IMAGENET_MEAN, IMAGENET_STD

# DINO draws the blur as PIL's ImageFilter.GaussianBlur(radius=U(0.1, 2.0)); Pillow's "radius" is the
# Gaussian's standard deviation, so sigma ~ U(0.1, 2.0) here (docs/recipes.md, "Per-view augmentation").
# The kernel spans +-3 sigma (13 taps at the largest sigma), in output pixels: the blur runs after the
# resize.
BLUR_SIGMA = (0.1, 2.0)
BLUR_KERNEL = 2 * math.ceil(3 * BLUR_SIGMA[1]) + 1


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
        if self.local_size != "auto":
            require_local_within_global(self.local_size, self.global_size)
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


def require_local_within_global(local_size: int, global_size: int, auto: bool = False) -> None:
    """Local views are the small, low-resolution ones of multi-crop (paper Secs. 3.1 and 3.2.2: LC 96 or
    128 px beside GC 224): a local crop larger than the global crops is a size left unscaled
    (global_size overridden alone, say), never a recipe. LC = GC is allowed."""
    size = f"'auto' resolves to {local_size} px, larger" if auto else f"{local_size} px is larger"
    require(
        local_size <= global_size,
        "local_size",
        f"{size} than global_size {global_size} px; local crops are the "
        "small views (paper: 96 or 128 beside 224): set views.local_size <= views.global_size, or scale both "
        "(the tiny presets: 32 and 14 or 18)",
    )


class Strengths(NamedTuple):
    """Augmentation strengths; per-view probabilities are for (global 1, global 2, local)."""

    jitter: tuple[float, float, float, float]  # brightness, contrast, saturation, hue
    blur_p: tuple[float, float, float]
    solarize_p: tuple[float, float, float]


# docs/recipes.md, "Per-view augmentation" (authors' configs, following DINO and SwAV), as are the
# constants below.
STRENGTHS = {
    "dino": Strengths(jitter=(0.4, 0.4, 0.2, 0.1), blur_p=(1.0, 0.1, 0.5), solarize_p=(0.0, 0.2, 0.0)),
    "swav": Strengths(jitter=(0.8, 0.8, 0.8, 0.2), blur_p=(0.5, 0.5, 0.5), solarize_p=(0.0, 0.0, 0.0)),
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

    @cached_property
    def log_ratio(self) -> tuple[float, float]:
        """The aspect-ratio bounds as the crop sampler draws them, computed once per recipe."""
        return log_ratio(self.ratio)


@dataclass(frozen=True)
class ViewPlan:
    """Every view of a config, resolved: the recipes of global 1, global 2 and the local kind, the
    number of locals and the normalisation."""

    kinds: tuple[ViewRecipe, ViewRecipe, ViewRecipe]  # global 1, global 2, local
    n_local: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def global_size(self) -> int:
        return self.kinds[0].size

    @property
    def local_size(self) -> int:
        return self.kinds[2].size

    @property
    def recipes(self) -> list[ViewRecipe]:
        """One recipe per view, in view order: global 1, global 2, then the locals."""
        return [self.kinds[0], self.kinds[1]] + [self.kinds[2]] * self.n_local


def resolve_local_size(cfg: ViewsConfig) -> int:
    """LC in pixels. ``auto`` is deterministic: the matched LC of :func:`pixel_scale_stats` on a
    square GC x GC image with its default sample count and seed."""
    if cfg.local_size != "auto":
        return cfg.local_size
    matched = pixel_scale_stats(cfg).matched_local_size
    require_local_within_global(matched, cfg.global_size, auto=True)
    return matched


def resolve_views(cfg: ViewsConfig) -> ViewPlan:
    """The view plan of ``cfg`` (``local_size: auto`` resolved by Monte Carlo, so resolve once)."""
    strengths = STRENGTHS[cfg.augmentation]
    jitter = jitter_ranges(strengths.jitter)

    def kind(index: int, size: int, scale: tuple[float, float]) -> ViewRecipe:
        return ViewRecipe(
            size=size,
            scale=tuple(scale),
            ratio=tuple(cfg.ratio),
            interpolation=cfg.interpolation,
            jitter=jitter,
            blur_p=strengths.blur_p[index],
            solarize_p=strengths.solarize_p[index],
            blur_sigma=tuple(cfg.blur_sigma),
        )

    return ViewPlan(
        kinds=(
            kind(0, cfg.global_size, cfg.global_scale),
            kind(1, cfg.global_size, cfg.global_scale),
            kind(2, resolve_local_size(cfg), cfg.local_scale),
        ),
        n_local=cfg.n_local,
        mean=tuple(cfg.mean),
        std=tuple(cfg.std),
    )
