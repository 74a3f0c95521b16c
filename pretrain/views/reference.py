"""DINO's reference augmentation pipeline, for the tests and benchmarks that compare lowssl's views to it.

:func:`dino_reference` is ``DataAugmentationDINO`` of DINO's
facebookresearch/dino@7c446df5b9f45747937fb0d72314eb9f7b66930a:main_dino.py (torchvision v1
transforms on PIL images; its ``GaussianBlur`` and ``Solarization`` come from utils.py there), built from a :class:`~pretrain.views.config.ViewPlan`: the plan's sizes, scales, ratio, interpolation,
jitter strengths, blur and solarize probabilities and normalisation, so the ``swav`` strengths run
through the same chain. DINO draws its blur and solarize coins from Python's ``random``; pass
``coins=TorchCoins`` to draw them from torch's RNG instead, in the same places, and the reference
makes the same random calls in the same order as :class:`~pretrain.views.cpu.MultiCropViews`: one
torch seed then gives both the same boxes, flips, jitter, blur and solarize decisions.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Protocol

import torch
from PIL import Image, ImageFilter, ImageOps
from torch import Tensor
from torchvision import transforms as T

from lowssl.pretrain.views.config import ViewPlan, ViewRecipe


class Coins(Protocol):
    """The two calls DINO's blur and solarize make on Python's ``random`` module."""

    def random(self) -> float: ...

    def uniform(self, low: float, high: float) -> float: ...


class TorchCoins:
    """DINO's ``random.random()`` / ``random.uniform()`` calls, drawn from torch's global RNG."""

    @staticmethod
    def random() -> float:
        return torch.rand(1).item()

    @staticmethod
    def uniform(low: float, high: float) -> float:
        return torch.empty(1).uniform_(low, high).item()


class GaussianBlur:
    """DINO's ``utils.GaussianBlur``: PIL's blur of radius U(sigma range) with probability p."""

    def __init__(self, p: float, sigma: tuple[float, float], coins: Coins) -> None:
        self.p, self.sigma, self.coins = p, sigma, coins

    def __call__(self, image: Image.Image) -> Image.Image:
        if not self.coins.random() <= self.p:
            return image
        return image.filter(ImageFilter.GaussianBlur(radius=self.coins.uniform(*self.sigma)))


class Solarization:
    """DINO's ``utils.Solarization``: PIL's solarize (threshold 128) with probability p."""

    def __init__(self, p: float, coins: Coins) -> None:
        self.p, self.coins = p, coins

    def __call__(self, image: Image.Image) -> Image.Image:
        return ImageOps.solarize(image) if self.coins.random() < self.p else image


def dino_reference(plan: ViewPlan, coins: Coins = random) -> Callable[[Image.Image], list[Tensor]]:
    """DINO's DataAugmentationDINO at the plan's parameters: a PIL image -> the views, in view order.
    A kind with solarize p 0 has no solarize step (DINO's global 1 and local views)."""
    normalize = T.Compose([T.ToTensor(), T.Normalize(plan.mean, plan.std)])

    def chain(recipe: ViewRecipe) -> T.Compose:
        brightness, contrast, saturation, hue = recipe.jitter
        solarize = [Solarization(recipe.solarize_p, coins)] if recipe.solarize_p else []
        return T.Compose(
            [
                T.RandomResizedCrop(
                    recipe.size,
                    scale=recipe.scale,
                    ratio=recipe.ratio,
                    interpolation=T.InterpolationMode(recipe.interpolation),
                ),
                T.RandomHorizontalFlip(p=recipe.flip_p),
                T.RandomApply([T.ColorJitter(brightness, contrast, saturation, hue)], p=recipe.jitter_p),
                T.RandomGrayscale(p=recipe.greyscale_p),
                GaussianBlur(recipe.blur_p, recipe.blur_sigma, coins),
                *solarize,
                normalize,
            ]
        )

    global_1, global_2, local = (chain(recipe) for recipe in plan.kinds)

    def views(image: Image.Image) -> list[Tensor]:
        return [global_1(image), global_2(image)] + [local(image) for _ in range(plan.n_local)]

    return views
