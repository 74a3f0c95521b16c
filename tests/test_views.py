import json
import math
import subprocess
import sys

import pytest
import torch
from PIL import Image, ImageFilter
from torch.utils.data import DataLoader
from torchvision.transforms.v2 import functional as F

from lowssl.config import ConfigError, from_dict
from lowssl.pretrain.views import (
    GpuViewAugment,
    MultiCropViews,
    ViewsConfig,
    collate_views,
    pixel_scale_stats,
    resolve_views,
)
from lowssl.pretrain.views.__main__ import main
from lowssl.pretrain.views.config import BLUR_KERNEL
from lowssl.pretrain.views.cpu import gaussian_blur
from lowssl.pretrain.views.pixel_scale import sample_crop_areas

MEAN = torch.tensor((0.485, 0.456, 0.406)).view(3, 1, 1)
STD = torch.tensor((0.229, 0.224, 0.225)).view(3, 1, 1)


pytestmark = pytest.mark.usefixtures("one_thread")


def small_config(**overrides) -> ViewsConfig:
    values = {
        "global_scale": [0.3, 1.0],
        "local_scale": [0.05, 0.3],
        "global_size": 32,
        "local_size": 16,
        "n_local": 3,
    }
    return from_dict(ViewsConfig, {**values, **overrides})


def small_sampler(**overrides) -> MultiCropViews:
    return MultiCropViews(resolve_views(small_config(**overrides)))


def noise_image(size=(48, 40), seed=0) -> Image.Image:
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (3, size[0], size[1]), generator=generator, dtype=torch.uint8)
    return F.to_pil_image(pixels)


def test_view_count_sizes_and_order():
    views = small_sampler()(noise_image())
    assert [tuple(view.shape) for view in views] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 3
    assert all(view.dtype == torch.float32 for view in views)


def test_grey_pil_and_uint8_tensor_inputs_give_rgb_views():
    sampler = small_sampler(n_local=1)
    grey = noise_image().convert("L")
    assert [view.shape[0] for view in sampler(grey)] == [3, 3, 3]
    assert [view.shape[0] for view in sampler(F.pil_to_tensor(grey))] == [3, 3, 3]


@pytest.mark.parametrize(
    ("augmentation", "jitter", "blur_p", "solarize_p"),
    [
        ("dino", (0.4, 0.4, 0.2, 0.1), (1.0, 0.1, 0.5), (None, 0.2, None)),
        ("swav", (0.8, 0.8, 0.8, 0.2), (0.5, 0.5, 0.5), (None, None, None)),
    ],
)
def test_per_view_transform_parameters(augmentation, jitter, blur_p, solarize_p):
    sampler = small_sampler(augmentation=augmentation, n_local=2)
    assert len(sampler.recipes) == 4
    for index, recipe in enumerate(sampler.recipes):
        kind = min(index, 2)  # global 1, global 2, local
        size, scale = ((32, (0.3, 1.0)), (32, (0.3, 1.0)), (16, (0.05, 0.3)))[kind]
        assert (recipe.size, recipe.scale) == (size, scale) and recipe.interpolation == "bicubic"
        assert recipe.ratio == pytest.approx((3 / 4, 4 / 3))
        assert recipe.flip_p == 0.5
        assert recipe.jitter_p == 0.8
        brightness, contrast, saturation, hue = recipe.jitter
        assert brightness == pytest.approx((1 - jitter[0], 1 + jitter[0]))
        assert contrast == pytest.approx((1 - jitter[1], 1 + jitter[1]))
        assert saturation == pytest.approx((1 - jitter[2], 1 + jitter[2]))
        assert hue == pytest.approx((-jitter[3], jitter[3]))
        assert recipe.greyscale_p == 0.2
        assert recipe.blur_p == blur_p[kind]
        assert list(recipe.blur_sigma) == pytest.approx([0.1, 2.0])
        assert BLUR_KERNEL >= 2 * 3 * 2.0 + 1  # +-3 sigma at sigma 2
        assert (recipe.solarize_p or None, recipe.solarize_threshold) == (solarize_p[kind], 128)


def test_only_global_2_can_be_solarized():
    # A white image stays uniform through crop, DINO's jitter (brightness >= 0.6 keeps it >= 153),
    # greyscale and blur; only solarization (invert >= 128) can bring a view below mid-grey.
    sampler = small_sampler(global_size=8, local_size=4, n_local=1)
    white = Image.new("RGB", (16, 16), (255, 255, 255))
    torch.manual_seed(0)
    dark = [0, 0, 0]
    for _ in range(30):
        for index, view in enumerate(sampler(white)):
            dark[index] += int((view * STD + MEAN).mean() < 0.5)
    assert dark[0] == dark[2] == 0
    assert 2 <= dark[1] <= 14  # p = 0.2 of 30 draws


def test_crop_areas_stay_inside_scale_ranges():
    sampler = small_sampler(global_scale=[0.3, 1.0], local_scale=[0.05, 0.3])
    torch.manual_seed(0)
    for recipe, (low, high) in ((sampler.recipes[0], (0.3, 1.0)), (sampler.recipes[2], (0.05, 0.3))):
        fractions = sample_crop_areas(recipe.scale, recipe.ratio, (1000, 1000), 3000) / 1e6
        # Rounding the crop's sides to whole pixels moves the area by < 1% on a 1000 px image.
        assert fractions.min() >= low * 0.99 and fractions.max() <= high * 1.01
        assert fractions.min() < low + 0.02 and fractions.max() > high - 0.05  # the whole range is used


def test_same_seed_same_views_other_seed_other_views():
    sampler = small_sampler()
    image = noise_image()
    torch.manual_seed(0)
    first = sampler(image)
    torch.manual_seed(0)
    again = sampler(image)
    torch.manual_seed(1)
    other = sampler(image)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not any(torch.equal(a, b) for a, b in zip(first, other, strict=True))


def test_collate():
    sampler = small_sampler(n_local=3)
    dataset = [(sampler(noise_image(seed=k)), k) for k in range(5)]
    views, labels = next(iter(DataLoader(dataset, batch_size=4, collate_fn=collate_views)))
    assert [tuple(view.shape) for view in views] == [(4, 3, 32, 32)] * 2 + [(4, 3, 16, 16)] * 3
    assert torch.equal(labels, torch.tensor([0, 1, 2, 3]))
    assert torch.equal(views[2][1], dataset[1][0][2])


@pytest.mark.parametrize("sigma", [0.1, 1.0, 2.0])
def test_gaussian_blur_matches_torchvision_and_pil_radius(sigma):
    generator = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, 40, 40), generator=generator, dtype=torch.uint8)
    ours = torch.from_numpy(gaussian_blur(image.permute(1, 2, 0).numpy().copy(), sigma)).permute(2, 0, 1)
    # A true Gaussian: torchvision's (13 taps, reflected edges) away from the edges, where only the
    # padding differs (edge pixels are repeated here, as PIL does).
    reference = F.gaussian_blur(image, [BLUR_KERNEL, BLUR_KERNEL], [sigma, sigma])
    inner = slice(BLUR_KERNEL // 2, -(BLUR_KERNEL // 2))
    assert (ours.int() - reference.int())[:, inner, inner].abs().max() <= 1
    # DINO's PIL GaussianBlur(radius=r) is a Gaussian of sigma = r (Pillow approximates it with box blurs).
    pil = F.to_pil_image(image)

    def distance(radius):
        return (
            (ours.float() - F.pil_to_tensor(pil.filter(ImageFilter.GaussianBlur(radius))).float())
            .abs()
            .mean()
        )

    if sigma >= 1:
        assert (
            distance(sigma) < 2
            and distance(sigma) < distance(sigma * 0.7)
            and distance(sigma) < distance(sigma * 1.4)
        )
    # Views smaller than the kernel are blurred too (edge pixels repeated) instead of failing.
    tiny = image[:, :4, :4].permute(1, 2, 0).numpy().copy()
    assert gaussian_blur(tiny, sigma).shape == (4, 4, 3)


def test_pixel_scale_estimator_matches_closed_form_without_clipping():
    # Scales <= 3/4 on a square image never hit torchvision's aspect-ratio rejection, so
    # E[A_l / A_g] = E[A_l] E[1 / A_g] = (0.05 + 0.3) / 2 * ln(0.7 / 0.3) / 0.4 for uniform areas.
    cfg = small_config(global_scale=[0.3, 0.7], local_scale=[0.05, 0.3], global_size=224, local_size=96)
    stats = pixel_scale_stats(cfg, image_size=(2000, 2000), n_samples=5000, seed=0)
    expected = 224 * math.sqrt(0.175 * math.log(0.7 / 0.3) / 0.4)
    assert stats.exact_local_size == pytest.approx(expected, rel=0.015)
    assert stats.mean_ps_ratio == pytest.approx((stats.exact_local_size / 96) ** 2)
    assert abs(stats.matched_local_size - stats.exact_local_size) <= 0.5


def test_pixel_scale_is_seeded_and_leaves_global_rng_alone():
    cfg = small_config(global_size=224, local_size=96)
    state = torch.get_rng_state()
    first = pixel_scale_stats(cfg, n_samples=300, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert pixel_scale_stats(cfg, n_samples=300, seed=3) == first
    assert pixel_scale_stats(cfg, n_samples=300, seed=4).mean_ps_ratio != first.mean_ps_ratio


def test_auto_local_size_is_the_matched_size():
    plan = resolve_views(small_config(global_size=224, local_size="auto", n_local=1))
    # Deterministic: pixel_scale_stats' defaults (20,000 crops each, seed 0) on a 224 x 224 image.
    assert plan.local_size == 128  # S = 0.3, see test_pixel_scale_cli
    assert MultiCropViews(plan)(noise_image())[2].shape == (3, 128, 128)


# Measured with the defaults (20,000 crops of each kind, seed 0, square 224 px image): LC* = 127.67
# at S = 0.3 and 109.01 at S = 0.14. The paper (Sec. 3.2.2) says 128 and 103. Fewer samples here
# for speed: LC* moves by well under a pixel.
@pytest.mark.slow  # starts Python with torch: several seconds on a loaded machine
@pytest.mark.parametrize(("scale", "low", "high"), [(0.3, 125, 131), (0.14, 106, 112)])
def test_pixel_scale_cli(scale, low, high):
    command = [
        sys.executable,
        "-m",
        "lowssl.pretrain.views",
        "pixel-scale",
        "--global-scale",
        str(scale),
        "1.0",
    ]
    command += [
        "--local-scale",
        "0.05",
        str(scale),
        "--global-size",
        "224",
        "--samples",
        "5000",
        "--seed",
        "0",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(summary) == {"mean_ps_ratio", "matched_local_size"}
    assert low <= summary["matched_local_size"] <= high
    assert summary["mean_ps_ratio"] == pytest.approx(1.0, abs=0.02)


# The remaining CLI checks run in-process: starting Python with torch takes seconds here.
def test_pixel_scale_cli_with_local_size(capsys):
    assert (
        main(
            [
                "pixel-scale",
                "--global-scale",
                "0.14",
                "1",
                "--local-scale",
                "0.05",
                "0.14",
                "--local-size",
                "96",
                "--samples",
                "2000",
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # LC = 96 < the matched ~109: local views have finer pixels, PS_g / PS_l = (LC* / 96)^2 > 1.
    assert summary["mean_ps_ratio"] > 1.15 and 106 <= summary["matched_local_size"] <= 112


def test_pixel_scale_cli_rejects_local_scale_above_global(capsys):
    with pytest.raises(SystemExit) as exit_info:  # argparse's error exit, not a traceback
        main(["pixel-scale", "--global-scale", "0.3", "0.5", "--local-scale", "0.05", "0.6"])
    assert exit_info.value.code != 0
    assert "config key 'local_scale'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"global_scale": [0.3, 0.5], "local_scale": [0.05, 0.6]}, "local_scale"),
        ({"local_size": 0}, "local_size"),
        ({"local_size": "big"}, "local_size"),
        ({"global_scale": [1.0, 0.3]}, "global_scale"),
        ({"local_scale": [0.3, 0.05]}, "local_scale"),
        ({"local_scale": [0.0, 0.3]}, "local_scale"),
        ({"global_scale": [0.3, 1.5]}, "global_scale"),
        ({"global_size": 0}, "global_size"),
        ({"n_global": 3}, "n_global"),
        ({"n_local": -1}, "n_local"),
        ({"augmentation": "byol"}, "augmentation"),
        ({"ratio": [4 / 3, 3 / 4]}, "ratio"),
        ({"blur_sigma": [0.3, 0.1]}, "blur_sigma"),
        ({"blur_sigma": [0.1, 3.0]}, "blur_sigma"),  # beyond the kernel of +-3 x 2.0 px
    ],
)
def test_impossible_configs_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        small_config(**overrides)


def test_blur_sigma_reaches_every_view_on_both_paths():
    plan = resolve_views(small_config(blur_sigma=[0.0143, 0.286]))  # tiny presets' 224-px range at 32 px
    assert all(recipe.blur_sigma == (0.0143, 0.286) for recipe in MultiCropViews(plan).recipes)
    sigmas = GpuViewAugment(plan).sample_params(torch.zeros(1000, dtype=torch.long))["sigma"]
    assert 0.0143 <= sigmas.min() and sigmas.max() <= 0.286
