"""``python -m lowssl.pretrain --config X --dry-run``: what a run will do, before paying for it.

Resolves the config as training would and prints the run's shape: processes and batches, steps per
epoch and in all, the LR after batch scaling and its schedule, every view's size and scale (the
local size resolved), the parameter groups with their sizes and flags, and an estimated time from a
few timed optimiser steps on synthetic views (this machine, this device). Nothing is written.

It answers within seconds wherever it runs: without the data (an ImageFolder run planned on a login
node, with or without ``data.root``) it assumes ImageNet-1k's size; without the run's device (a
``device=cuda`` run planned on a CPU machine) it skips the timing; on a CPU it times one step of a small
batch and scales it (a paper config's 224 px views take minutes a step at its batch). Each says so.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from lowssl.backbones import count_params_m
from lowssl.config import apply_overrides, load, read_yaml
from lowssl.data import DatasetError, build_dataset
from lowssl.pretrain.config import PretrainConfig
from lowssl.pretrain.optim import build_optimizer, param_groups
from lowssl.pretrain.train import build_run_method
from lowssl.pretrain.views import resolve_views

# Where the data is not on this machine (a login node), the paper's set: ImageNet-1k's training split.
IMAGENET_TRAIN_IMAGES, IMAGENET_CLASSES = 1_281_167, 1000
# The data.root of an ImageFolder run planned without one: no folder, so the plan assumes ImageNet-1k.
NO_ROOT = "<no data.root given>"
# On a CPU, a step is timed on at most this many view pixels (a tiny preset's 32 px views: a batch of
# 16; a paper config's 224 px ones: 2), once, and scaled: seconds, where its own batch takes minutes.
CPU_TIMED_PIXELS = 1 << 16


def load_plan(path: str | Path, overrides: list[str]) -> PretrainConfig:
    """The config as training resolves it; an ImageFolder run without ``data.root`` is planned (at
    ImageNet-1k's size, :func:`training_images`) where training would refuse it."""
    data = apply_overrides(read_yaml(path), overrides).get("data") or {}
    if data.get("dataset") == "imagefolder" and data.get("root") is None:
        overrides = [*overrides, f"data.root={NO_ROOT}"]
    return load(PretrainConfig, path, overrides)


def training_images(cfg: PretrainConfig) -> tuple[int, str]:
    """How many images one epoch trains on (the monitor's held-out images removed), and from where."""
    total, classes = IMAGENET_TRAIN_IMAGES, IMAGENET_CLASSES
    if cfg.data.root == NO_ROOT:
        where = f"assumed ImageNet-1k's {total:,}: no data.root given"
    else:
        try:
            images = build_dataset(cfg.data.dataset, "train", cfg.data.root, cfg.data.image_size)
            total, classes, where = len(images), len(images.classes), f"{cfg.data.dataset} at hand"
        except DatasetError as error:
            where = f"assumed ImageNet-1k's {total:,} ({' '.join(str(error).split())[:80]}...)"
    count = total - cfg.monitor.held_out_per_class * classes
    return (count if cfg.data.subset is None else min(count, cfg.data.subset)), where


def run_device(cfg: PretrainConfig) -> torch.device | None:
    """The device the run would use on this machine; None where it asks for CUDA and there is none."""
    if cfg.device == "cuda" and not torch.cuda.is_available():
        return None
    use_cuda = torch.cuda.is_available() if cfg.device == "auto" else cfg.device == "cuda"
    return torch.device("cuda" if use_cuda else "cpu")


def time_steps(
    cfg: PretrainConfig, method: torch.nn.Module, device: torch.device, steps: int, batch: int
) -> float:
    """Seconds per optimiser step of one process at ``batch`` images on ``device``, timed after one
    warm-up step."""
    method = method.to(device)
    optimizer = build_optimizer(method, cfg.optim)
    plan = resolve_views(cfg.views)
    views = [torch.randn(batch, 3, recipe.size, recipe.size, device=device) for recipe in plan.recipes]
    timings = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        loss = method(views, 0).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        timings.append(time.perf_counter() - start)
    return sum(timings[1:]) / steps


def describe(
    cfg: PretrainConfig, processes: int | None = None, timed_steps: int = 2, timed_batch: int = 64
) -> str:
    """The run's shape as ``--dry-run`` prints it, one line per fact (the module docstring lists them)."""
    processes = processes or int(os.environ.get("WORLD_SIZE", "1"))
    images, where = training_images(cfg)
    steps_per_epoch = images // cfg.batch_size
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    plan = resolve_views(cfg.views)
    method = build_run_method(cfg, processes)
    lines = [
        f"experiment      {cfg.experiment}: {cfg.method_name} on {cfg.backbone}, {cfg.data.dataset} at {plan.global_size}px",
        f"run folder      {cfg.run_dir}",
        f"processes       {processes}, batch {cfg.batch_size} = {processes} x {cfg.batch_size // processes}",
        f"data            {images:,} training images ({where})",
        f"steps           {steps_per_epoch:,} per epoch x {cfg.epochs} epochs = {total_steps:,}"
        + (f" (max_steps {cfg.max_steps})" if cfg.max_steps else ""),
        f"optimiser       {cfg.optim.name}, peak LR {cfg.optim.peak_lr(cfg.batch_size):.4g} "
        f"(base_lr {cfg.optim.base_lr:g} x {cfg.batch_size}/{cfg.optim.lr_reference_batch_size}), "
        f"warm-up {cfg.optim.warmup_epochs} epochs, cosine to {cfg.optim.min_lr:g}",
    ]
    for label, recipe, count in (
        ("global 1", plan.kinds[0], 1),
        ("global 2", plan.kinds[1], 1),
        ("local", plan.kinds[2], plan.n_local),
    ):
        lines.append(
            f"view {label:<10} {count} x {recipe.size}px, scale {tuple(recipe.scale)}, {recipe.interpolation}"
        )
    lines.append(
        f"parameters      {count_params_m(method):.2f} M in the method (student, teacher / key encoder, heads)"
    )
    for group in param_groups(method, cfg.optim.exclusion_rule, cfg.optim.weight_decay):
        numel = sum(param.numel() for _, param in group["params"])
        lines.append(
            f"  group {group['kind']:<10} {len(group['params']):>4} tensors {numel / 1e6:8.3f} M, "
            f"weight decay {'yes' if group['apply_weight_decay'] else 'no'}, "
            f"LARS adaptation {'yes' if group['lars_adaptation'] else 'no'}"
        )
    if timed_steps:
        lines.append(estimated_time(cfg, method, processes, total_steps, timed_steps, timed_batch))
    return "\n".join(lines)


def estimated_time(
    cfg: PretrainConfig, method: torch.nn.Module, processes: int, total_steps: int, steps: int, batch: int
) -> str:
    """The ``estimated time`` line: a few steps timed on synthetic views (one of a small batch on a CPU;
    none without the run's device), scaled linearly to the run's batch per process and its steps."""
    device = run_device(cfg)
    if device is None:
        return "estimated time  timing skipped: no cuda device here (device=cuda); run --dry-run there to time it"
    per_process = cfg.batch_size // processes
    batch, timed = min(per_process, batch), f"{steps} steps timed"
    view_pixels = sum(recipe.size**2 for recipe in resolve_views(cfg.views).recipes)
    if device.type == "cpu" and batch * view_pixels > CPU_TIMED_PIXELS:
        batch, steps = max(2, CPU_TIMED_PIXELS // view_pixels), 1  # 2: batch norm needs two images
        timed = "1 step timed (shrunk for this CPU)"
    seconds = time_steps(cfg, method, device, steps, batch) * per_process / batch
    return (
        f"estimated time  {seconds:.2f} s/step x {total_steps:,} steps = {seconds * total_steps / 3600:.2f} h "
        f"on this machine's {device.type} ({timed} at batch {batch} on synthetic views, scaled linearly "
        f"to {per_process} per process; data loading and communication not included)"
    )
