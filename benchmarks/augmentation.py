"""Multi-crop augmentation throughput per CPU core: lowssl's sampler vs DINO's reference pipeline.

The reference is built the way DINO's ``DataAugmentationDINO`` does it: PIL images, one torchvision
v1 transform chain per crop, PIL Gaussian blur and solarize, ToTensor + Normalize per view. Both run
in one process with one thread on the same decoded JPEGs of natural size (about 500x375, generated),
so images/s is per core. Decoding is included for both (it is part of every real data loader).

    python -m benchmarks.augmentation --images 200
"""

from __future__ import annotations

import argparse
import io
import json
import random
import statistics
import time

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps
from torchvision import transforms as T

from lowssl.config import from_dict
from pretrain.views import MultiCropViews, ViewsConfig

RECIPES = {  # facts.md section 1
    "baseline": {"global_scale": [0.14, 1.0], "local_scale": [0.05, 0.14], "local_size": 96},
    "ours": {"global_scale": [0.3, 1.0], "local_scale": [0.05, 0.3], "local_size": 128},
}


def natural_jpegs(count: int, seed: int = 0) -> list[bytes]:
    """JPEG files of about 500x375 with smooth structure (upsampled noise), as natural photos compress."""
    rng = np.random.default_rng(seed)
    files = []
    for i in range(count):
        width, height = (500, 375) if i % 3 else (375, 500)
        coarse = rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90)
        files.append(buffer.getvalue())
    return files


class _PILBlur:
    def __init__(self, p: float) -> None:
        self.p = p

    def __call__(self, image):
        if random.random() > self.p:
            return image
        return image.filter(ImageFilter.GaussianBlur(radius=random.uniform(0.1, 2.0)))


class _PILSolarize:
    def __init__(self, p: float) -> None:
        self.p = p

    def __call__(self, image):
        return ImageOps.solarize(image) if random.random() < self.p else image


def dino_reference(recipe: dict, n_local: int = 6):
    """DINO's DataAugmentationDINO (main_dino.py), with the recipe's scales and local size."""
    flip_and_jitter = T.Compose([
        T.RandomHorizontalFlip(p=0.5),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
    ])  # fmt: skip
    normalize = T.Compose([T.ToTensor(), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    bicubic = T.InterpolationMode.BICUBIC
    global_1 = T.Compose([T.RandomResizedCrop(224, scale=recipe["global_scale"], interpolation=bicubic),
                          flip_and_jitter, _PILBlur(1.0), normalize])  # fmt: skip
    global_2 = T.Compose([T.RandomResizedCrop(224, scale=recipe["global_scale"], interpolation=bicubic),
                          flip_and_jitter, _PILBlur(0.1), _PILSolarize(0.2), normalize])  # fmt: skip
    local = T.Compose([T.RandomResizedCrop(recipe["local_size"], scale=recipe["local_scale"], interpolation=bicubic),
                       flip_and_jitter, _PILBlur(0.5), normalize])  # fmt: skip

    def views(image):
        return [global_1(image), global_2(image)] + [local(image) for _ in range(n_local)]

    return views


def lowssl_sampler(recipe: dict, n_local: int = 6):
    return MultiCropViews(from_dict(ViewsConfig, {**recipe, "global_size": 224, "n_local": n_local}))


def images_per_second(pipeline, files: list[bytes]) -> float:
    start = time.perf_counter()
    for data in files:
        with Image.open(io.BytesIO(data)) as image:
            pipeline(image.convert("RGB"))
    return len(files) / (time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    files = natural_jpegs(args.images)
    results = []
    for name, recipe in RECIPES.items():
        pipelines = {"lowssl": lowssl_sampler(recipe), "dino_reference": dino_reference(recipe)}
        runs = {key: [] for key in pipelines}
        for _ in range(args.repeats):  # interleaved, so drifts in machine load hit both alike
            for key, pipeline in pipelines.items():
                runs[key].append(images_per_second(pipeline, files))
        ratios = [a / b for a, b in zip(runs["lowssl"], runs["dino_reference"], strict=True)]
        result = {"recipe": name, "local_size": recipe["local_size"],
                  **{f"{k}_images_per_s_median": statistics.median(v) for k, v in runs.items()},
                  **{f"{k}_images_per_s_runs": v for k, v in runs.items()},
                  "speedup_median": statistics.median(ratios), "speedup_spread": max(ratios) - min(ratios)}  # fmt: skip
        results.append(result)
        print(json.dumps(result), flush=True)
    if args.out:
        with open(args.out, "w") as file:
            json.dump(results, file, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
