"""Multi-crop augmentation split between the data loader and the GPU, for when the loader cannot keep up.

The loader does only what needs the full image: decode, crop and resize (:class:`CropViews`, the same
crop sampling and resize as :class:`pretrain.views.cpu.MultiCropViews`), giving uint8 views at their final
size. The device then applies everything else to whole batches (:class:`GpuViewAugment`) with
per-sample random parameters and the probabilities of docs/recipes.md, "Per-view augmentation":
horizontal flip, colour jitter (p 0.8; brightness, contrast, saturation and hue factors per sample,
the four operations in a random order per sample, as torchvision's ColorJitter), greyscale, Gaussian
blur with a per-sample sigma (one depthwise convolution per direction) and solarize, then
normalisation::

    plan = resolve_views(cfg)                   # the one resolved view plan (pretrain.views.config)
    crops = CropViews(plan)                     # in the Dataset, instead of MultiCropViews
    augment = GpuViewAugment(plan)              # in the training loop
    views, labels = next(loader)                # collate_views: one (B, 3, S, S) uint8 tensor per view
    views = augment([v.to("cuda", non_blocking=True) for v in views])

The colour operations are torchvision's tensor formulas (float, no 8-bit rounding in between), which
differ from DINO's PIL operations by about a grey level (see pretrain/views/cpu.py). Everything runs
wherever the views are (CPU in the tests) without host synchronisation: each operation is evaluated on
the whole batch and selected per sample. Random numbers come from torch's RNG of the views' device, or
from ``generator``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as tnf
from PIL import Image
from torch import Tensor

from lowssl.pretrain.views.config import BLUR_KERNEL, ViewPlan
from lowssl.pretrain.views.cpu import one_opencv_thread, resized_crop, uint8_rgb
from lowssl.pretrain.views.crop import crop_box

# ITU-R 601-2 luma with torchvision's rounding of the coefficients (its tensor rgb_to_grayscale).
LUMA = (0.2989, 0.587, 0.114)


class CropViews:
    """The loader's half: an image -> [global 1, global 2, locals] as uint8 (3, S, S) tensors, cropped and
    resized exactly as :class:`MultiCropViews` does (same box sampling, same antialiased resize)."""

    def __init__(self, plan: ViewPlan) -> None:
        self.plan = plan
        self.recipes = plan.recipes

    def __call__(self, image: Image.Image | Tensor) -> list[Tensor]:
        pixels = uint8_rgb(image)
        height, width = pixels.shape[-2:]
        views = []
        with one_opencv_thread():
            for recipe in self.recipes:
                box = crop_box(height, width, recipe.scale, recipe.ratio, recipe.log_ratio)
                array = resized_crop(pixels, box, recipe.size, recipe.interpolation)
                views.append(torch.from_numpy(array).permute(2, 0, 1))
        return views


def _per_kind(
    value: float | Sequence[float] | None, default: tuple[float, float, float]
) -> tuple[float, ...]:
    if value is None:
        return tuple(default)
    if isinstance(value, int | float):
        return (float(value),) * 3
    return tuple(float(v) for v in value)


class GpuViewAugment:
    """The device's half: uint8 views (one (B, 3, S, S) tensor per view, in view order) -> normalised
    float views, each sample with its own random flip, jitter, greyscale, blur and solarize.

    Probabilities default to the plan's recipes (docs/recipes.md, "Per-view augmentation"); each can
    be overridden, the blur and solarize ones per view kind (global 1, global 2, local) or with one
    value for all.
    """

    def __init__(
        self,
        plan: ViewPlan,
        *,
        flip_p: float | None = None,
        jitter_p: float | None = None,
        greyscale_p: float | None = None,
        blur_p: float | Sequence[float] | None = None,
        solarize_p: float | Sequence[float] | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        first = plan.kinds[0]  # flip, jitter, greyscale and blur sigma are the same for every kind
        self.flip_p = first.flip_p if flip_p is None else flip_p
        self.jitter_p = first.jitter_p if jitter_p is None else jitter_p
        self.greyscale_p = first.greyscale_p if greyscale_p is None else greyscale_p
        self.blur_p = _per_kind(blur_p, tuple(kind.blur_p for kind in plan.kinds))
        self.solarize_p = _per_kind(solarize_p, tuple(kind.solarize_p for kind in plan.kinds))
        self.jitter = first.jitter  # brightness, contrast, saturation, hue ranges
        self.blur_sigma = first.blur_sigma
        self.threshold = first.solarize_threshold / 255
        self.mean = torch.tensor(plan.mean).view(1, 3, 1, 1)
        self.std = torch.tensor(plan.std).view(1, 3, 1, 1)
        self.generator = generator

    def __call__(self, views: Sequence[Tensor]) -> list[Tensor]:
        if len(views) < 2:
            raise ValueError(f"expected [global 1, global 2, locals...], got {len(views)} views")
        out = list(self._augment_group(list(views[:2]), [0, 1]))
        if len(views) > 2:
            out += self._augment_group(list(views[2:]), [2] * (len(views) - 2))
        return out

    def _augment_group(self, views: list[Tensor], kinds: list[int]) -> list[Tensor]:
        """Views of one size, augmented as one batch (per-sample probabilities by view kind)."""
        sizes = [len(view) for view in views]
        x = torch.cat(views).to(torch.float32).div_(255)
        kind = torch.cat([torch.full((n,), k, dtype=torch.long) for n, k in zip(sizes, kinds, strict=True)])
        params = self.sample_params(kind.to(x.device))
        x = self.apply(x, params)
        x = (x - self.mean.to(x.device)) / self.std.to(x.device)
        return list(x.split(sizes))

    def sample_params(self, kind: Tensor) -> dict[str, Tensor]:
        """Per-sample parameters for samples of the given view kinds (0 global 1, 1 global 2, 2 local)."""
        n, device = len(kind), kind.device

        def uniform(low: float, high: float, *shape: int) -> Tensor:
            return torch.rand(n, *shape, device=device, generator=self.generator) * (high - low) + low

        blur_p = torch.tensor(self.blur_p, device=device)[kind]
        solarize_p = torch.tensor(self.solarize_p, device=device)[kind]
        factors = torch.stack([uniform(low, high) for low, high in self.jitter], dim=1)  # (n, 4)
        return {
            "flip": uniform(0, 1) < self.flip_p,
            "jitter": uniform(0, 1) < self.jitter_p,
            "factors": factors,  # brightness, contrast, saturation, hue
            "order": uniform(0, 1, 4).argsort(dim=1),  # a uniformly random permutation per sample
            "greyscale": uniform(0, 1) < self.greyscale_p,
            "blur": uniform(0, 1) < blur_p,
            "sigma": uniform(*self.blur_sigma),
            "solarize": uniform(0, 1) < solarize_p,
        }

    def apply(self, x: Tensor, params: dict[str, Tensor]) -> Tensor:
        """Flip, jitter, greyscale, blur, solarize (DINO's order) of float (N, 3, H, W) images in [0, 1]."""
        x = _where(params["flip"], x.flip(-1), x)
        x = _colour_jitter(x, params["jitter"], params["factors"], params["order"])
        x = _where(params["greyscale"], _luma(x).expand_as(x), x)
        x = _where(params["blur"], gaussian_blur(x, params["sigma"]), x)
        return _where(params["solarize"], torch.where(x >= self.threshold, 1 - x, x), x)


def _where(mask: Tensor, a: Tensor, b: Tensor) -> Tensor:
    return torch.where(mask.view(-1, 1, 1, 1), a, b)


def _luma(x: Tensor) -> Tensor:
    r, g, b = x.unbind(1)
    return (LUMA[0] * r + LUMA[1] * g + LUMA[2] * b).unsqueeze(1)


def _blend_step(x: Tensor, op: Tensor, active: Tensor, factors: Tensor) -> Tensor:
    """Brightness (op 0), contrast (1) or saturation (2), whichever each active sample has here: each is
    torchvision's blend f * x + (1 - f) * D with D = 0, the mean luma, or the luma image."""
    factor = factors.gather(1, op.clamp(max=2).unsqueeze(1)).squeeze(1)
    factor = torch.where(active, factor, torch.ones_like(factor)).view(-1, 1, 1, 1)
    grey = _luma(x)
    op = op.view(-1, 1, 1, 1)
    degenerate = torch.where(op == 1, grey.mean((2, 3), keepdim=True), grey)
    degenerate = torch.where(op == 0, torch.zeros_like(degenerate), degenerate)
    return (factor * x + (1 - factor) * degenerate).clamp_(0, 1)


def _colour_jitter(x: Tensor, jitter: Tensor, factors: Tensor, order: Tensor) -> Tensor:
    """The four jitter operations in each sample's order. Hue, the costly one, runs once on the batch:
    each sample's brightness/contrast/saturation steps before its hue step, then hue, then those after."""
    hue_position = (order == 3).int().argmax(dim=1)
    for position in range(3):  # steps before hue (hue cannot be preceded by a step at position 3)
        op = order[:, position]
        x = _blend_step(x, op, jitter & (op != 3) & (position < hue_position), factors)
    x = _where(jitter, adjust_hue(x, factors[:, 3]), x)
    for position in range(1, 4):
        op = order[:, position]
        x = _blend_step(x, op, jitter & (op != 3) & (position > hue_position), factors)
    return x


def adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Hue shifted by ``shift`` turns per sample (torchvision's HSV formula), float (N, 3, H, W) in [0, 1]."""
    maxc, _ = x.max(dim=1)
    minc, _ = x.min(dim=1)
    chroma = maxc - minc
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    r, g, b = x.unbind(1)
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    hue = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    hue = torch.remainder(hue / 6.0 + shift.view(-1, 1, 1), 1.0)
    # HSV -> RGB: channel = V - V S clamp(min(k, 4 - k), 0, 1), k = (n + 6 H) mod 6, n = 5, 3, 1.
    n = torch.tensor((5.0, 3.0, 1.0), device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    k = torch.remainder(n + 6.0 * hue.unsqueeze(1), 6.0)
    return maxc.unsqueeze(1) - chroma.unsqueeze(1) * torch.minimum(k, 4.0 - k).clamp_(0, 1)


def gaussian_blur(x: Tensor, sigma: Tensor, kernel_size: int = BLUR_KERNEL) -> Tensor:
    """Per-sample Gaussian blur of (N, C, H, W): two depthwise 1-D convolutions, edge pixels repeated."""
    n, c, height, width = x.shape
    radius = kernel_size // 2
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    weights = torch.exp(-0.5 * (offsets / sigma.to(x.dtype).view(-1, 1)) ** 2)
    weights = (weights / weights.sum(1, keepdim=True)).repeat_interleave(c, dim=0)  # (N C, K)
    flat = tnf.pad(x.reshape(1, n * c, height, width), (radius,) * 4, mode="replicate")
    flat = tnf.conv2d(flat, weights.view(n * c, 1, 1, -1), groups=n * c)
    flat = tnf.conv2d(flat, weights.view(n * c, 1, -1, 1), groups=n * c)
    return flat.view(n, c, height, width)
