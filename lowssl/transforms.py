"""The image transforms the evaluation stages share, and ImageNet's normalisation constants.

Every protocol evaluates on a centre crop (docs/protocols.md): Resize(size * 256 / 224), then
CenterCrop(size), normalised; at 224 px that is the usual Resize 256 + CenterCrop 224. The linear
probe's "augmented" input and the semi-supervised fine-tuning train on RandomResizedCrop + horizontal
flip, normalised (docs/protocols.md; paper App. A). All are torchvision ``transforms.v2`` pipelines
on PIL images.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

#: ImageNet's per-channel mean and standard deviation (RGB), the normalisation of every stage.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resize_size(image_size: int) -> int:
    """The shorter side an image is resized to before the centre crop of ``image_size``: x 256/224."""
    return round(image_size * 256 / 224)


def _normalised(geometry: list, mean: Sequence[float], std: Sequence[float]) -> Callable:
    """PIL image -> uint8 tensor -> ``geometry`` (resizes and crops) -> float in [0, 1] -> normalised."""
    from torchvision.transforms import v2

    return v2.Compose(
        [v2.PILToTensor(), *geometry, v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    )


def centre_crop_transform(
    image_size: int,
    interpolation: str = "bicubic",
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Callable:
    """Resize(image_size * 256/224) + CenterCrop(image_size) + normalise."""
    from torchvision.transforms import v2

    resize = v2.Resize(
        resize_size(image_size), interpolation=v2.InterpolationMode(interpolation), antialias=True
    )
    return _normalised([resize, v2.CenterCrop(image_size)], mean, std)


def random_crop_transform(
    image_size: int,
    scale: tuple[float, float] = (0.08, 1.0),
    interpolation: str = "bicubic",
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Callable:
    """RandomResizedCrop(image_size, scale) + horizontal flip + normalise (torch's RNG only)."""
    from torchvision.transforms import v2

    crop = v2.RandomResizedCrop(
        image_size, scale=scale, interpolation=v2.InterpolationMode(interpolation), antialias=True
    )
    return _normalised([crop, v2.RandomHorizontalFlip()], mean, std)
