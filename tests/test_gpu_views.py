import math

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from lowssl.config import from_dict
from lowssl.pretrain.views import (
    CropViews,
    GpuViewAugment,
    ViewPlan,
    ViewsConfig,
    collate_views,
    resolve_views,
)
from lowssl.pretrain.views.config import BLUR_KERNEL
from lowssl.pretrain.views.cpu import resized_crop, uint8_rgb
from lowssl.pretrain.views.gpu import adjust_hue, gaussian_blur
from lowssl.pretrain.views.sampler import crop_box

MEAN = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
STD = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


pytestmark = pytest.mark.usefixtures("one_thread")


def plan(**overrides) -> ViewPlan:
    values = {"global_scale": [0.3, 1.0], "local_scale": [0.05, 0.3], "global_size": 32, "local_size": 16}
    return resolve_views(from_dict(ViewsConfig, {**values, "n_local": 3, **overrides}))


def natural_image(width=80, height=60, seed=0) -> Image.Image:
    coarse = np.random.default_rng(seed).integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)


def batch_of(image: Image.Image, n: int, crops: CropViews) -> list[torch.Tensor]:
    views, _ = collate_views([(crops(image), 0) for _ in range(n)])
    return views


def levels(views: torch.Tensor) -> torch.Tensor:
    return (views * STD.to(views.device) + MEAN.to(views.device)) * 255


def test_crop_views_are_the_samplers_crops_as_uint8():
    crops = CropViews(plan())
    image = natural_image()
    torch.manual_seed(0)
    views = crops(image)
    assert [tuple(v.shape) for v in views] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 3
    assert all(v.dtype == torch.uint8 for v in views)
    torch.manual_seed(0)  # the same box sampling and resize as MultiCropViews
    pixels = uint8_rgb(image)
    for view, recipe in zip(views, crops.recipes, strict=True):
        box = crop_box(60, 80, recipe.scale, recipe.ratio)
        assert torch.equal(
            view, torch.from_numpy(resized_crop(pixels, box, recipe.size, "bicubic")).permute(2, 0, 1)
        )


@pytest.mark.parametrize("device", DEVICES)
def test_shapes_and_per_sample_parameters(device):
    crops, augment = CropViews(plan()), GpuViewAugment(plan())
    views = [v.to(device) for v in batch_of(natural_image(), 16, crops)]
    torch.manual_seed(0)
    out = augment(views)
    assert [tuple(v.shape) for v in out] == [(16, 3, 32, 32)] * 2 + [(16, 3, 16, 16)] * 3
    assert all(v.dtype == torch.float32 and v.device.type == device for v in out)
    # The same crop in every sample: the samples still differ, by their own augmentation parameters.
    same = [v[:1].expand(16, -1, -1, -1).contiguous() for v in views]
    out = augment(same)
    for view in out:
        distinct = {tuple(sample.flatten()[:64].tolist()) for sample in view.cpu()}
        assert len(distinct) >= 12
    params = augment.sample_params(torch.zeros(64, dtype=torch.long, device=device))
    assert (
        len(set(params["factors"][:, 0].tolist())) == 64
        and len(set(map(tuple, params["order"].tolist()))) > 10
    )


def test_all_probabilities_zero_is_plain_normalisation():
    crops = CropViews(plan())
    augment = GpuViewAugment(plan(), flip_p=0, jitter_p=0, greyscale_p=0, blur_p=0, solarize_p=0)
    views = batch_of(natural_image(), 4, crops)
    for view, out in zip(views, augment(views), strict=True):
        assert torch.allclose(out, (view.float() / 255 - MEAN) / STD, atol=1e-6)


def test_parameter_probabilities_follow_the_recipe():
    augment = GpuViewAugment(plan())
    n = 4000
    torch.manual_seed(0)
    for kind, (blur_p, solarize_p) in enumerate([(1.0, 0.0), (0.1, 0.2), (0.5, 0.0)]):
        params = augment.sample_params(torch.full((n,), kind))
        for key, p in [
            ("flip", 0.5),
            ("jitter", 0.8),
            ("greyscale", 0.2),
            ("blur", blur_p),
            ("solarize", solarize_p),
        ]:
            count = params[key].sum().item()
            assert abs(count - n * p) <= 5 * math.sqrt(n * p * (1 - p)) + 1e-9, (kind, key, count)
        low = torch.tensor([0.6, 0.6, 0.8, -0.1])
        high = torch.tensor([1.4, 1.4, 1.2, 0.1])
        factors = params["factors"]
        assert (factors.min(0).values >= low).all() and (factors.max(0).values <= high).all()
        assert torch.allclose(factors.mean(0), (low + high) / 2, atol=0.02)
        assert 0.1 <= params["sigma"].min() and params["sigma"].max() <= 2.0
        assert len({tuple(order) for order in params["order"].tolist()}) == 24


def test_pixels_show_the_probabilities():
    augment = GpuViewAugment(plan(n_local=1))
    n = 600
    crops = CropViews(plan(n_local=1))
    colour = [view.repeat(n // 8, 1, 1, 1) for view in batch_of(natural_image(seed=1), 8, crops)]
    gradient = torch.linspace(0, 255, 16).round().to(torch.uint8).expand(n, 3, 16, 16)
    white = torch.full((n, 3, 16, 16), 255, dtype=torch.uint8)
    torch.manual_seed(0)
    grey = [
        (levels(v).amax(1) - levels(v).amin(1)).flatten(1).amax(1).lt(1e-3).float().mean()
        for v in augment(colour)
    ]
    profile = [levels(v).mean((1, 2)) for v in augment([gradient] * 3)]
    flipped = [(p[:, :4].mean(1) > p[:, -4:].mean(1)).float().mean() for p in profile]
    dark = [levels(v).mean((1, 2, 3)).lt(128).float().mean() for v in augment([white] * 3)]
    tolerance = 5 * math.sqrt(0.25 / n)
    assert all(abs(g - 0.2) < tolerance for g in grey)
    assert abs(flipped[0] - 0.5) < tolerance and abs(flipped[2] - 0.5) < tolerance
    assert dark[0] == dark[2] == 0 and abs(dark[1] - 0.2) < tolerance


def test_operations_match_torchvision():
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 24, 24, generator=generator)
    shifts = torch.tensor([-0.1, 0.0, 0.05, 0.1])
    ours = adjust_hue(x, shifts)
    for i, shift in enumerate(shifts.tolist()):
        assert torch.allclose(ours[i], F.adjust_hue(x[i], shift), atol=1e-5)
    sigmas = torch.tensor([0.1, 0.7, 1.3, 2.0])
    blurred = gaussian_blur(x, sigmas)
    inner = slice(BLUR_KERNEL // 2, -(BLUR_KERNEL // 2))
    for i, sigma in enumerate(sigmas.tolist()):
        reference = F.gaussian_blur(x[i], [BLUR_KERNEL, BLUR_KERNEL], [sigma, sigma])
        assert torch.allclose(blurred[i][:, inner, inner], reference[:, inner, inner], atol=1e-5)
    # One jitter operation per sample (the others neutral) equals torchvision's.
    augment = GpuViewAugment(plan())
    for op, function in enumerate([F.adjust_brightness, F.adjust_contrast, F.adjust_saturation]):
        factors = torch.ones(4, 4)
        factors[:, 3] = 0
        factors[:, op] = torch.tensor([0.6, 0.9, 1.2, 1.4])
        params = {
            "flip": torch.zeros(4, dtype=torch.bool),
            "jitter": torch.ones(4, dtype=torch.bool),
            "factors": factors,
            "order": torch.arange(4).expand(4, 4),
            "greyscale": torch.zeros(4, dtype=torch.bool),
            "blur": torch.zeros(4, dtype=torch.bool),
            "sigma": torch.ones(4),
            "solarize": torch.zeros(4, dtype=torch.bool),
        }
        out = augment.apply(x, params)
        for i in range(4):
            assert torch.allclose(out[i], function(x[i], factors[i, op].item()), atol=1e-5)


def test_jitter_order_is_per_sample():
    # Brightness 1.4 then contrast 0.6 differs from contrast then brightness on a clipped image.
    augment = GpuViewAugment(plan())
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    factors = torch.tensor([[1.4, 0.6, 1.0, 0.0]] * 2)
    order = torch.tensor([[0, 1, 2, 3], [1, 0, 2, 3]])
    none = torch.zeros(2, dtype=torch.bool)
    params = {
        "flip": none,
        "jitter": ~none,
        "factors": factors,
        "order": order,
        "greyscale": none,
        "blur": none,
        "sigma": torch.ones(2),
        "solarize": none,
    }
    out = augment.apply(x, params)
    first = F.adjust_contrast(F.adjust_brightness(x[0], 1.4), 0.6)
    second = F.adjust_brightness(F.adjust_contrast(x[1], 0.6), 1.4)
    assert torch.allclose(out[0], first, atol=1e-5) and torch.allclose(out[1], second, atol=1e-5)
