"""``python -m pretrain --config pretrain/configs/<name>.yaml [key=value ...]``: the training loop.

Reads top to bottom like DINO's ``main_dino.py``: config, processes, data, method, optimiser and
schedules, resume, then the epochs. One process per device under torchrun (DDP: NCCL on GPUs, gloo
on CPU).
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from lowssl import distributed
from lowssl.backbones import get_spec
from lowssl.config import ConfigError, config_hash, load, to_dict
from lowssl.data import DatasetError, IndexedImages, build_dataset, eval_transform, held_out_split
from lowssl.io import git_commit, remove_stale_temp_files
from lowssl.knn import knn_top1
from lowssl.records import Record, append_records, pretrain_budget
from lowssl.rng import rng_state, set_rng_state
from pretrain import checkpoint as ckpt
from pretrain.config import PretrainConfig
from pretrain.gpu_views import CropViews, GpuViewAugment
from pretrain.loader import build_loader
from pretrain.methods import MultiCropMethod, RunLayout, build_method
from pretrain.optim import build_optimizer, build_schedules, clip_gradients
from pretrain.views import MultiCropViews


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stops and the last good checkpoint is kept."""


class ResumeError(RuntimeError):
    """Resuming would change the model or the method."""


def parse_args(argv=None) -> tuple[PretrainConfig, list[str]]:
    parser = argparse.ArgumentParser(prog="python -m pretrain", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config", required=True, help="YAML file, e.g. pretrain/configs/tiny/dino_resnet18_ours.yaml"
    )
    parser.add_argument(
        "overrides", nargs="*", help="dotted overrides: epochs=2 optim.base_lr=0.3 output_dir=PATH"
    )
    args = parser.parse_args(argv)
    return load(PretrainConfig, args.config, args.overrides), args.overrides


def main(argv=None) -> int:
    try:
        cfg, _ = parse_args(argv)
        train(cfg)
    except (ConfigError, DatasetError, NonFiniteLossError, ResumeError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def train(cfg: PretrainConfig) -> dict:
    """Run (or resume) pre-training; returns the final metrics."""
    # ---- processes and determinism ------------------------------------------------------------
    ctx = distributed.init(cfg.device)
    torch.manual_seed(cfg.seed)
    if ctx.device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    run_dir = Path(cfg.run_dir)
    plain_config = to_dict(cfg)
    plain_config["method"] = {"name": cfg.method_name, **plain_config["method"]}
    provenance = {
        "config": plain_config,
        "config_hash": config_hash(plain_config),
        "git_commit": git_commit(),
    }

    # ---- data: pre-train on the training split minus the monitor's held-out images (Sec. 3.2) -----
    images = build_dataset(cfg.data.dataset, "train", cfg.data.root, cfg.data.image_size)
    train_index, held_index = held_out_split(images.targets, cfg.monitor.held_out_per_class, cfg.seed)
    if cfg.data.subset is not None:
        train_index = train_index[: cfg.data.subset]
    views = CropViews(cfg.views) if cfg.device_augment else MultiCropViews(cfg.views)
    device_augment = GpuViewAugment(cfg.views) if cfg.device_augment else None
    batch_per_process = cfg.batch_size // ctx.world_size
    if batch_per_process * ctx.world_size != cfg.batch_size:
        raise ConfigError(
            f"config key 'batch_size': {cfg.batch_size} is not divisible by {ctx.world_size} processes"
        )
    loader, sampler = build_loader(
        IndexedImages(images, train_index), views, batch_per_process, ctx.rank, ctx.world_size, cfg.seed,
        cfg.data.num_workers, cfg.data.on_corrupt_image == "skip", ctx.device.type == "cuda",
    )  # fmt: skip
    steps_per_epoch = sampler.steps_per_epoch
    total_steps = cfg.epochs * steps_per_epoch

    # ---- method, optimiser, schedules -------------------------------------------------------------
    method = build_run_method(cfg, ctx.world_size)
    if cfg.method_name == "swav" and method.cfg.queue_length != cfg.method.queue_length:
        _say(ctx, f"method.queue_length {cfg.method.queue_length} -> {method.cfg.queue_length}: SwAV's queue "
                  f"holds whole global batches of {cfg.batch_size} (SwAV's main_swav.py), "
                  f"{method.queue.shape[1]} rows per process")  # fmt: skip
    method_config = {"name": cfg.method_name, **to_dict(method.cfg)}
    if cfg.channels_last:
        method = method.to(memory_format=torch.channels_last)
    if ctx.distributed and cfg.sync_bn and ctx.device.type == "cuda":
        method = nn.SyncBatchNorm.convert_sync_batchnorm(method)  # gloo has no SyncBN: per-process BN on CPU
    method.to(ctx.device)
    # broadcast_buffers=False: SwAV's queue is per process (as in SwAV), not rank 0's copied to all.
    model = DistributedDataParallel(method, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None,
                                    broadcast_buffers=False) if ctx.distributed else method  # fmt: skip
    optimizer = build_optimizer(method, cfg.optim)
    schedules = build_schedules(cfg.optim, cfg.epochs, steps_per_epoch, cfg.batch_size)
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=cfg.amp == "fp16")
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp)
    probe = (
        OnlineProbe(get_spec(cfg.backbone).feature_dim, len(images.classes), ctx.device)
        if cfg.monitor.online_linear
        else None
    )

    # ---- resume -------------------------------------------------------------------------------------
    start_epoch, start_batch, global_step = 0, 0, 0
    resume_path = _resume_path(cfg, run_dir)
    if ctx.is_main:  # a kill mid-save leaves a partial temp file beside the whole checkpoint
        for stale in remove_stale_temp_files(run_dir):
            _say(ctx, f"removed {stale.name}, left by a run killed while saving")
    if resume_path is not None:
        state = ckpt.load(resume_path)
        differences = ckpt.model_differences(state["config"], plain_config)
        if differences:
            raise ResumeError(
                f"refusing to resume {resume_path}: the config changes the model or method:\n  "
                + "\n  ".join(differences)
                + "\nuse a new output_dir, or resume=never to start over"
            )
        method.load_state_dict(state["method_state"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["grad_scaler"])
        if probe is not None and state.get("online_probe"):
            probe.load_state_dict(state["online_probe"])
        set_rng_state(state["rng"])
        start_epoch, start_batch, global_step = state["epoch"], state["step_in_epoch"], state["global_step"]
        _say(
            ctx,
            f"resumed from {resume_path} at epoch {start_epoch}, step {start_batch} (global step {global_step})",
        )

    def save(path: Path, epoch: int, step_in_epoch: int, metrics: dict) -> Path:
        teacher = getattr(method, "teacher_backbone", None)
        return ckpt.save(path, {
            "student_backbone": _cpu_state(method.student_backbone),
            "teacher_backbone": _cpu_state(teacher) if teacher is not None else None,
            "method_state": _cpu_state(method), "method_config": method_config,
            "optimizer": optimizer.state_dict(),
            "grad_scaler": scaler.state_dict(),
            "online_probe": probe.state_dict() if probe is not None else None,
            "epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": global_step,
            "rng": rng_state(), "metrics": metrics,
            "method": cfg.method_name, "backbone": cfg.backbone, "recipe": cfg.recipe,
            **provenance,
        })  # fmt: skip

    # ---- logs ----------------------------------------------------------------------------------------
    logger = RunLogger(run_dir, enabled=ctx.is_main)
    last_path = run_dir / "last.pth"
    metrics: dict = {}

    # ---- epochs --------------------------------------------------------------------------------------
    for epoch in range(start_epoch, cfg.epochs):
        sampler.set_epoch(epoch, start_batch if epoch == start_epoch else 0)
        method.train()
        first_batch = start_batch if epoch == start_epoch else 0
        bar = tqdm(loader, total=steps_per_epoch - first_batch, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   disable=not ctx.is_main, dynamic_ncols=True, leave=False)  # fmt: skip
        tick = time.perf_counter()
        for step_in_epoch, (batch_views, labels, skipped) in enumerate(bar, start=first_batch):
            values = schedules.apply(optimizer, global_step)
            batch_views = [v.to(ctx.device, non_blocking=True) for v in batch_views]
            if device_augment is not None:
                batch_views = device_augment(batch_views)
            if cfg.channels_last:
                batch_views = [v.contiguous(memory_format=torch.channels_last) for v in batch_views]

            method.normalize_prototypes()  # SwAV: L2-normalised prototypes every step (docs/recipes.md)
            with torch.autocast(ctx.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                out = model(batch_views, epoch)
            if not math.isfinite(out.loss.item()):
                raise NonFiniteLossError(
                    f"loss is {out.loss.item()} at epoch {epoch}, step {step_in_epoch} (global step "
                    f"{global_step}); loss terms: {out.terms}. The run stopped; the last good checkpoint is "
                    f"{last_path if last_path.exists() else 'none (no checkpoint was written yet)'}"
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(out.loss).backward()
            if cfg.optim.clip_grad is not None:
                scaler.unscale_(optimizer)
                clip_gradients(method, cfg.optim.clip_grad)
            method.cancel_frozen_gradients(epoch)  # DINO last layer / SwAV prototypes in epoch 1
            scaler.step(optimizer)
            scaler.update()
            method.update_teacher(method.teacher_momentum(global_step, total_steps))
            if probe is not None:
                probe.step(method.student_backbone, batch_views[0], labels.to(ctx.device), values.lr)
            global_step += 1

            elapsed, tick = time.perf_counter() - tick, time.perf_counter()
            images_per_s = len(labels) * ctx.world_size / max(elapsed, 1e-9)
            bar.set_postfix(loss=f"{out.loss.item():.4f}", lr=f"{values.lr:.2e}", img_s=f"{images_per_s:.0f}")
            logger.step(global_step, epoch, out.terms, values, images_per_s, skipped)

            stop = cfg.max_steps is not None and global_step >= cfg.max_steps
            mid_epoch = step_in_epoch + 1 < steps_per_epoch
            if ctx.is_main and mid_epoch and (stop or _every(cfg.checkpoint.every_steps, step_in_epoch + 1)):
                save(last_path, epoch, step_in_epoch + 1, metrics)
            if stop:
                break
        bar.close()
        if stop and mid_epoch:
            break

        # ---- end of epoch: monitor, checkpoints ------------------------------------------------------
        metrics = {"epoch": epoch + 1, "loss": out.loss.item()}
        if ctx.is_main and _every(cfg.monitor.knn_every_epochs, epoch + 1):
            metrics["knn_top1_heldout"] = monitor_knn(
                cfg, method.student_backbone, images, train_index, held_index, ctx.device
            )
        if probe is not None:
            metrics["online_linear_top1"] = probe.epoch_accuracy()
        logger.epoch(epoch + 1, metrics)
        _say(ctx, f"epoch {epoch + 1}/{cfg.epochs}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
        if ctx.is_main:
            save(last_path, epoch + 1, 0, metrics)
            if _every(cfg.checkpoint.every_epochs, epoch + 1) or epoch + 1 == cfg.epochs:
                save(run_dir / f"checkpoint_epoch{epoch + 1:04d}.pth", epoch + 1, 0, metrics)
        distributed.barrier()
        if stop:
            break

    logger.close()
    if ctx.is_main and metrics.keys() & {"knn_top1_heldout", "online_linear_top1"}:
        _write_records(cfg, provenance, metrics, run_dir)
    return metrics


# ---- pieces the loop uses ---------------------------------------------------------------------------


def build_run_method(cfg: PretrainConfig, n_processes: int) -> MultiCropMethod:
    """The method as a run of ``n_processes`` processes trains it: the config's student stochastic
    depth, per-process state (SwAV's queue) sized for the global batch."""
    return build_method(cfg.method_name, cfg.backbone, cfg.method, drop_path_rate=cfg.drop_path_rate,
                        layout=RunLayout(cfg.batch_size, n_processes))  # fmt: skip


def _resume_path(cfg: PretrainConfig, run_dir: Path) -> Path | None:
    if cfg.resume == "never":
        return None
    if cfg.resume == "auto":
        path = run_dir / "last.pth"
        return path if path.exists() else None
    if not Path(cfg.resume).is_file():
        raise ResumeError(f"resume checkpoint {cfg.resume} does not exist")
    return Path(cfg.resume)


def _every(every: int, count: int) -> bool:
    return every > 0 and count % every == 0


def _cpu_state(module: nn.Module) -> dict:
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


def _say(ctx, message: str) -> None:
    if ctx.is_main:
        tqdm.write(message)


class _SkipUnreadable(torch.utils.data.Dataset):
    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        try:
            return self.dataset[index]
        except DatasetError:
            return None


def _collate_readable(batch):
    return torch.utils.data.default_collate([item for item in batch if item is not None])


@torch.no_grad()
def extract_features(
    backbone: nn.Module, dataset, device, skip_unreadable: bool = False, batch_size: int = 256
):
    """Pooled features of ``dataset`` (eval mode), with labels; unreadable images dropped if asked."""
    was_training = backbone.training
    backbone.eval()
    if skip_unreadable:
        dataset = _SkipUnreadable(dataset)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0,
                                         collate_fn=_collate_readable)  # fmt: skip
    features, labels = [], []
    for images, targets in loader:
        features.append(backbone(images.to(device)).float().cpu())
        labels.append(targets)
    backbone.train(was_training)
    return torch.cat(features), torch.cat(labels)


def monitor_knn(cfg: PretrainConfig, backbone, images, train_index, held_index, device) -> float:
    """The authors' online monitor: weighted 20-NN (T 0.07) of held-out training images."""
    transform = eval_transform(cfg.views.global_size, cfg.views.mean, cfg.views.std)
    bank_index = (
        train_index if cfg.monitor.knn_bank_size is None else train_index[: cfg.monitor.knn_bank_size]
    )
    skip = cfg.data.on_corrupt_image == "skip"
    bank, bank_labels = extract_features(backbone, IndexedImages(images, bank_index, transform), device, skip)
    queries, query_labels = extract_features(
        backbone, IndexedImages(images, held_index, transform), device, skip
    )
    return knn_top1(bank, bank_labels, queries, query_labels, len(images.classes),
                    cfg.monitor.knn_k, cfg.monitor.knn_temperature)  # fmt: skip


class OnlineProbe:
    """A linear classifier trained on detached student features of global 1 (docs/recipes.md,
    "Monitoring during training"):
    a cheap running signal of representation quality, never back-propagated into the backbone."""

    def __init__(self, feature_dim: int, num_classes: int, device) -> None:
        self.linear = nn.Linear(feature_dim, num_classes).to(device)
        self.optimizer = torch.optim.SGD(self.linear.parameters(), lr=0.0, momentum=0.9)
        self.correct = self.seen = 0

    def step(self, backbone: nn.Module, images: torch.Tensor, labels: torch.Tensor, lr: float) -> None:
        with torch.no_grad():
            features = backbone(images).float()
        logits = self.linear(features)
        loss = nn.functional.cross_entropy(logits, labels)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.correct += (logits.argmax(1) == labels).sum().item()
        self.seen += len(labels)

    def epoch_accuracy(self) -> float:
        accuracy = 100.0 * self.correct / max(self.seen, 1)
        self.correct = self.seen = 0
        return accuracy

    def state_dict(self) -> dict:
        return {"linear": self.linear.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.linear.load_state_dict(state["linear"])
        self.optimizer.load_state_dict(state["optimizer"])


class RunLogger:
    """TensorBoard scalars and a CSV log (``log.csv``, one row per step) in the run folder."""

    def __init__(self, run_dir: Path, enabled: bool) -> None:
        self.enabled = enabled
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        run_dir.mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(str(run_dir / "tensorboard"))
        self.csv_path = run_dir / "log.csv"
        self.skipped = 0

    def step(self, step: int, epoch: int, terms: dict, values, images_per_s: float, skipped: int) -> None:
        if not self.enabled:
            return
        self.skipped += skipped
        row = {"step": step, "epoch": epoch, **{k: float(v) for k, v in terms.items()}, "lr": values.lr,
               "weight_decay": values.weight_decay, "images_per_s": images_per_s, "skipped_images": self.skipped}  # fmt: skip
        new = not self.csv_path.exists()
        with open(self.csv_path, "a", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)
        for key, value in row.items():
            if key not in ("step", "epoch"):
                self.writer.add_scalar(f"train/{key}", value, step)

    def epoch(self, epoch: int, metrics: dict) -> None:
        if self.enabled:
            for key, value in metrics.items():
                if key != "epoch":
                    self.writer.add_scalar(f"monitor/{key}", value, epoch)

    def close(self) -> None:
        if self.enabled:
            self.writer.close()


def _write_records(cfg: PretrainConfig, provenance: dict, metrics: dict, run_dir: Path) -> None:
    details = {
        "alpha": cfg.method.alpha,
        "exclusion_rule": cfg.optim.exclusion_rule,
        "views": provenance["config"]["views"],
        "run_dir": str(run_dir),
        "pretrain_budget": pretrain_budget(provenance["config"]),
    }
    common = dict(
        run_id=pretrain_run_id(cfg, provenance["config_hash"]), stage="pretrain", method=cfg.method_name,
        recipe=cfg.recipe, backbone=cfg.backbone, pretrain_epochs=metrics["epoch"], dataset=cfg.data.dataset,
        branch="student", config_hash=provenance["config_hash"], git_commit=provenance["git_commit"],
        details=details, seed=cfg.seed,
    )  # fmt: skip
    monitors = {"knn_top1_heldout": "online-knn20-heldout", "online_linear_top1": "online-linear-global1"}
    rows = [Record(**common, protocol=monitors[metric], metric=metric, value=metrics[metric])
            for metric in monitors if metric in metrics]  # fmt: skip
    append_records(rows, cfg.records_dir)


def pretrain_run_id(cfg: PretrainConfig, config_hash: str) -> str:
    """One run, one records file: the experiment, its seed and the hash of its resolved config (which
    holds the output folder), so another seed or folder never replaces this run's rows."""
    return f"pretrain-{cfg.experiment}-seed{cfg.seed}-{config_hash[:8]}"
