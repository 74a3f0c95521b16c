"""Multi-crop augmentation throughput per CPU core: lowssl's sampler vs DINO's reference pipeline.

The reference is DINO's ``DataAugmentationDINO`` (pretrain/views/reference.py): PIL images, one
torchvision v1 transform chain per crop, PIL Gaussian blur and solarize, ToTensor + Normalize per view. Both run
in one process with one thread (torch and OpenCV) on the same JPEGs of natural size (about 500x375,
generated), interleaved repeat by repeat so drifts in machine load hit both alike. Decoding is
included for both (it is part of every real data loader).

Per core: ``*_images_per_s_*`` is images per CPU-second of this process (``time.process_time``, all
threads counted), which is the wall-clock rate on a quiet core and is not inflated by a busy machine
taking the core away; ``*_wall_images_per_s_*`` is the wall-clock rate. ``speedup_*`` is the
lowssl / reference ratio of the per-core rates, per repeat (median and spread = max - min).

    python -m lowssl.benchmarks.augmentation --images 100 --repeats 3
"""

from __future__ import annotations

import argparse
import io
import time

import cv2
import numpy as np
import torch
from PIL import Image

from lowssl.benchmarks.report import show, summary, write
from lowssl.config import from_dict
from lowssl.pretrain.views import MultiCropViews, ViewPlan, ViewsConfig, resolve_views
from lowssl.pretrain.views.reference import dino_reference

RECIPES = {  # docs/recipes.md, "Baseline and ours"
    "baseline": {"global_scale": [0.14, 1.0], "local_scale": [0.05, 0.14], "local_size": 96},
    "ours": {"global_scale": [0.3, 1.0], "local_scale": [0.05, 0.3], "local_size": 128},
}


def natural_jpegs(count: int, seed: int = 0, size: tuple[int, int] = (500, 375)) -> list[bytes]:
    """JPEG files of ``size`` (width, height; every third one portrait), by default ImageNet's typical
    500x375, with smooth structure (upsampled noise), as natural photos compress."""
    rng = np.random.default_rng(seed)
    files = []
    for i in range(count):
        width, height = size if i % 3 else size[::-1]
        coarse = rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90)
        files.append(buffer.getvalue())
    return files


def view_plan(recipe: dict, n_local: int = 6, global_size: int = 224, augmentation: str = "dino") -> ViewPlan:
    cfg = {**recipe, "global_size": global_size, "n_local": n_local, "augmentation": augmentation}
    return resolve_views(from_dict(ViewsConfig, cfg))


def images_per_second(pipeline, files: list[bytes]) -> tuple[float, float]:
    """(images per CPU-second of this process, images per wall-clock second)."""
    wall, cpu = time.perf_counter(), time.process_time()
    for data in files:
        with Image.open(io.BytesIO(data)) as image:
            pipeline(image.convert("RGB"))
    return len(files) / (time.process_time() - cpu), len(files) / (time.perf_counter() - wall)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cv2.setNumThreads(1)  # lowssl also sets it during each call; the reference does not use OpenCV
    files = natural_jpegs(args.images)
    results = []
    for name, recipe in RECIPES.items():
        plan = view_plan(recipe)
        pipelines = {"lowssl": MultiCropViews(plan), "dino_reference": dino_reference(plan)}
        for pipeline in pipelines.values():  # warm-up: first-call allocations and imports
            images_per_second(pipeline, files[:3])
        cpu = {key: [] for key in pipelines}
        wall = {key: [] for key in pipelines}
        for _ in range(args.repeats):  # interleaved, so drifts in machine load hit both alike
            for key, pipeline in pipelines.items():
                per_cpu_s, per_wall_s = images_per_second(pipeline, files)
                cpu[key].append(per_cpu_s)
                wall[key].append(per_wall_s)
        speedup = [a / b for a, b in zip(cpu["lowssl"], cpu["dino_reference"], strict=True)]
        speedup_wall = [a / b for a, b in zip(wall["lowssl"], wall["dino_reference"], strict=True)]
        result = {
            "recipe": name,
            "local_size": recipe["local_size"],
            "images": args.images,
            "repeats": args.repeats,
        }
        for key in pipelines:
            for label, runs in ((f"{key}_images_per_s", cpu[key]), (f"{key}_wall_images_per_s", wall[key])):
                result.update({f"{label}_{stat}": value for stat, value in summary(runs).items()})
        result.update({f"speedup_{stat}": value for stat, value in summary(speedup).items()})
        result.update({f"speedup_wall_{stat}": value for stat, value in summary(speedup_wall).items()})
        results.append(result)
        show(result)
    write(results, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
