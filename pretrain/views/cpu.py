"""The CPU views: :class:`MultiCropViews` and the OpenCV operations it applies.

:class:`MultiCropViews` maps one image to ``[global 1, global 2, local 1, ..., local L]``
(docs/recipes.md, "View sampling"), each a normalised CHW float tensor, with the per-view augmentation
of the :class:`~pretrain.views.config.ViewPlan` drawn by :func:`~pretrain.views.sampler.sample_view`
exactly as DINO's reference pipeline (:mod:`pretrain.views.reference`) draws it.

Speed (3.3-4.6x the reference per CPU core, ``python -m lowssl.benchmarks.augmentation``): the image is
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
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as tnf
from PIL import Image
from torch import Tensor

from lowssl.pretrain.views.config import SOLARIZE_THRESHOLD, ViewPlan, ViewRecipe
from lowssl.pretrain.views.sampler import ViewParams, sample_view

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


class MultiCropViews:
    """Maps an RGB image (PIL, or a uint8 CHW tensor) to the list of views of ``plan``, in view order.

    Randomness comes from torch's global RNG only: seeding torch before a call reproduces its views.
    """

    def __init__(self, plan: ViewPlan) -> None:
        self.plan = plan
        self.recipes = plan.recipes
        std = torch.tensor(plan.std).view(3, 1, 1)
        self._scale = 1 / (255 * std)
        self._shift = torch.tensor(plan.mean).view(3, 1, 1) / std

    def __call__(self, image: Image.Image | Tensor) -> list[Tensor]:
        pixels = uint8_rgb(image)
        height, width = pixels.shape[-2:]
        with one_opencv_thread():
            return [self._view(pixels, recipe, sample_view(recipe, height, width)) for recipe in self.recipes]

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
