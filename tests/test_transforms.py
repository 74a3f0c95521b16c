"""lowssl.transforms: the centre crop every protocol evaluates on and the random crop it trains on."""

import torch
from PIL import Image

from lowssl.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    centre_crop_transform,
    random_crop_transform,
    resize_size,
)


def test_centre_crop_is_resize_256_and_crop_224_scaled_to_the_size():
    assert (resize_size(224), resize_size(32), resize_size(96)) == (256, 37, 110)
    image = Image.new("RGB", (80, 40), (255, 0, 0))
    image.paste((0, 255, 0), (38, 0, 42, 40))  # a green stripe in the middle, nothing at the edges
    crop = centre_crop_transform(16, "bilinear")(image)
    assert crop.shape == (3, 16, 16) and crop.dtype == torch.float32
    red = (1 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
    assert torch.allclose(crop[0, :, 0], torch.full((16,), red), atol=1e-4)  # the crop's edge is red
    assert crop[1, :, 8].min() > crop[1, :, 0].max()  # the centre column is the green stripe


def test_random_crop_is_seeded_by_torch_and_keeps_the_size():
    image = Image.fromarray(torch.randint(0, 256, (40, 40, 3), dtype=torch.uint8).numpy())
    transform = random_crop_transform(24, scale=(0.2, 0.5))
    torch.manual_seed(3)
    first = [transform(image) for _ in range(2)]
    torch.manual_seed(3)
    second = [transform(image) for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True)) and first[0].shape == (
        3,
        24,
        24,
    )
    assert not torch.equal(first[0], first[1])
