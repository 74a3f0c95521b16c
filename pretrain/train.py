"""``python -m pretrain --config pretrain/configs/<name>.yaml [key=value ...]``: the training loop.

Reads top to bottom like DINO's ``main_dino.py``: config, processes, data, method, optimiser and
schedules, resume, then the epochs. One process per device under torchrun (DDP: NCCL on GPUs, gloo
on CPU).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from lowssl import distributed
from lowssl.backbones import get_spec
from lowssl.checkpoints import schema
from lowssl.config import ConfigError, config_hash, load, to_dict
from lowssl.data import DatasetError, IndexedImages, build_dataset, held_out_split
from lowssl.features import extract_features
from lowssl.io import DiskFullError, atomic_write_text, first_non_finite, git_commit, remove_stale_temp_files
from lowssl.knn import knn_evaluate
from lowssl.progress import add_quiet_argument, progress, say, set_quiet
from lowssl.records import Record, append_records, default_runs_dir, pretrain_budget
from lowssl.rng import rng_state, set_rng_state
from lowssl.run_lock import RunFolderBusy, run_folder_lock
from lowssl.stopping import NonFiniteLossError, NonFiniteWeightsError, ResumeError, StopSignals
from lowssl.transforms import centre_crop_transform
from pretrain.config import PretrainConfig
from pretrain.loader import build_loader
from pretrain.methods import MultiCropMethod, RunLayout, build_method
from pretrain.optim import Schedules, build_optimizer, build_schedules, clip_gradients
from pretrain.views import CropViews, GpuViewAugment, MultiCropViews, resolve_views


def _configs_help() -> str:
    """The configs shipped with lowssl, for ``--help``: the paper's experiments and the tiny presets."""
    root = Path(__file__).resolve().parent / "configs"
    lines = []
    for folder, title in (
        (root, "paper experiments (ImageNet)"),
        (root / "tiny", "tiny presets (Fashion-MNIST, CPU)"),
    ):
        names = sorted(path.stem for path in folder.glob("*.yaml"))
        lines.append(
            f"{title}, {folder.relative_to(root.parent.parent)}/:\n  "
            + textwrap.fill(" ".join(names), 96).replace("\n", "\n  ")
        )
    lines.append(
        "see a run before paying for it: --print-config (the resolved YAML), --dry-run (steps, LR, views, time)"
    )
    return "\n".join(lines)


def parse_args(argv=None) -> tuple[PretrainConfig, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        prog="python -m pretrain",
        description="Pre-train a backbone with DINO, SwAV or MoCo-v2* under the paper's or the baseline "
        "view recipe; one YAML per paper experiment, any key overridden as key=value.",
        epilog=_configs_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config", required=True, help="YAML file, e.g. pretrain/configs/tiny/dino_resnet18_ours.yaml"
    )
    parser.add_argument(
        "overrides", nargs="*", help="dotted overrides: epochs=2 optim.base_lr=0.3 output_dir=PATH"
    )
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config (YAML) and exit"
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print what the run will do (steps, LR, views, parameter groups, estimated time) and exit",
    )
    parser.add_argument("--processes", type=int, help="--dry-run: processes the run will have (default: 1)")
    parser.add_argument(
        "--timed-steps",
        type=int,
        default=2,
        help="--dry-run: optimiser steps timed for the estimate (0: none)",
    )
    add_quiet_argument(parser)
    args = parser.parse_intermixed_args(argv)  # overrides may come before or after the flags
    return load(PretrainConfig, args.config, args.overrides), args


def main(argv=None) -> int:
    try:
        cfg, args = parse_args(argv)
        set_quiet(args.quiet)
        if args.print_config or args.dry_run:
            from pretrain.dry_run import describe

            print(
                resolved_yaml(cfg) if args.print_config else describe(cfg, args.processes, args.timed_steps)
            )
            return 0
        train(cfg)
    except RunFolderBusy as error:  # another live run owns the folder: this one changed nothing
        print(f"error: {error}", file=sys.stderr)
        return 2
    except ConfigError as error:  # bad input (a hostile or mistyped config): exit 2, as every stage's CLI
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (DatasetError, DiskFullError, NonFiniteLossError, ResumeError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def train(cfg: PretrainConfig) -> dict:
    """Run (or resume) pre-training; returns the final metrics. Rank 0 holds the run folder's lock
    (lowssl.run_lock); SIGTERM / SIGUSR1 / SIGUSR2 stop the run at a step, saved (lowssl.stopping)."""
    ctx = distributed.init(cfg.device)
    with run_folder_lock(cfg.run_dir, ctx.is_main), StopSignals(ctx.device) as stop:
        return _train(cfg, ctx, stop)


def _train(cfg: PretrainConfig, ctx: distributed.Context, stop: StopSignals) -> dict:
    started = time.monotonic()
    # ---- determinism ----------------------------------------------------------------------------------
    torch.manual_seed(cfg.seed)
    if ctx.device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    run_dir = Path(cfg.run_dir)

    # ---- data, then method, optimiser and schedules (in this order: the seed initialises both) ---
    data = build_data(cfg, ctx)
    run = build_run(cfg, ctx, run_dir, data.sampler.steps_per_epoch, len(data.images.classes))
    if ctx.is_main:  # the resolved config beside the run, readable without loading a checkpoint
        atomic_write_text(run_dir / "config.yaml", resolved_yaml(cfg))

    # ---- resume -----------------------------------------------------------------------------------
    start_epoch, start_batch = resume(run)
    records_file = (
        Path(cfg.records_dir or default_runs_dir())
        / f"{pretrain_run_id(cfg, run.provenance['config_hash'])}.csv"
    )
    say(_banner(run, data.sampler.steps_per_epoch, records_file), enabled=ctx.is_main)
    if start_epoch >= cfg.epochs or run.budget_spent:  # a finished run: resuming it trains nothing more
        _close(run, "complete", data.sampler.steps_per_epoch, None, started)
        return run.metrics

    # ---- epochs: each ends with the monitor and its checkpoints, unless the step budget ran out ----
    logger = RunLogger(run_dir, ctx.is_main, cfg.log_every_steps, run.provenance)
    for epoch in range(start_epoch, cfg.epochs):
        first_batch = start_batch if epoch == start_epoch else 0
        loss = train_one_epoch(run, data, epoch, first_batch, logger, stop)
        if loss is not None:  # None: max_steps ran out inside the epoch; last.pth holds the position
            end_epoch(run, data, epoch, loss, logger)
        if run.budget_spent:
            break
        if epoch + 1 < cfg.epochs and stop.requested():  # end_epoch saved last.pth at this epoch's end
            logger.close()
            stop.stop(f"pre-training after epoch {epoch + 1} (global step {run.global_step})", run.last_path)
    logger.close()

    # ---- records: the final monitor values --------------------------------------------------------
    records_written = None
    if ctx.is_main and run.metrics.keys() & {"knn_top1_heldout", "online_linear_top1"}:
        records_written = _write_records(cfg, run.provenance, run.metrics, run_dir)
    _close(
        run,
        "max_steps" if run.budget_spent else "done",
        data.sampler.steps_per_epoch,
        records_written,
        started,
    )
    return run.metrics


def _banner(run: Run, steps_per_epoch: int, records_file: Path) -> str:
    """The run's first line: where it lives, fresh or resumed, what it runs on, where its records go."""
    cfg, ctx = run.cfg, run.ctx
    start = (
        f"resumed from {run.resumed_from} at global step {run.global_step}"
        if run.resumed_from is not None
        else "fresh run"
    )
    stop = f", stopping at max_steps={cfg.max_steps}" if cfg.max_steps is not None else ""
    processes = f" x {ctx.world_size} processes" if ctx.world_size > 1 else ""
    return (
        f"pretrain {cfg.experiment}: {start} in {run.run_dir.absolute()}; {cfg.epochs} epochs of "
        f"{steps_per_epoch} steps{stop}; {ctx.device}{processes}, {torch.get_num_threads()} threads; "
        f"records -> {records_file.absolute()}"
    )


def _close(run: Run, why: str, steps_per_epoch: int, records: Path | None, started: float) -> None:
    """The run's last line (printed under --quiet too): why it stopped and what it wrote where."""
    if not run.ctx.is_main:
        return
    cfg, step = run.cfg, run.global_step
    epoch, in_epoch = divmod(step, steps_per_epoch)
    position = (
        f"end of epoch {epoch} of {cfg.epochs}"
        if in_epoch == 0
        else f"epoch {epoch + 1}, step {in_epoch} of {steps_per_epoch}"
    )
    if why == "complete":
        print(
            f"pretrain already complete: {run.last_path.absolute()} holds global step {step} ({position}); "
            f"nothing was trained (raise epochs= or max_steps= to continue it, resume=never to start over)"
        )
        return
    reason = f"stopped at max_steps={cfg.max_steps}" if why == "max_steps" else "done"
    recorded = (
        f"records {records.absolute()}"
        if records is not None
        else "no records (no epoch ended with a monitor value)"
    )
    print(
        f"pretrain {reason} after {time.monotonic() - started:.0f} s: global step {step} ({position}); "
        f"checkpoint {run.last_path.absolute()}; {recorded}"
    )


# ---- set-up -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunData:
    """The pre-training images and the loader that turns them into batches of views."""

    images: Any  # the whole training split: the monitor's bank and held-out queries come from it too
    train_index: Any  # the images pre-trained on
    held_index: Any  # the monitor's held-out images (paper Sec. 3.2, "Setting")
    loader: torch.utils.data.DataLoader
    sampler: Any  # pretrain.loader's resumable sampler: steps_per_epoch, set_epoch(epoch, first_batch)
    device_augment: GpuViewAugment | None  # the colour half of the views, on the device (device_augment)


def build_data(cfg: PretrainConfig, ctx: distributed.Context) -> RunData:
    """Pre-train on the training split minus the monitor's held-out images (paper Sec. 3.2)."""
    images = build_dataset(cfg.data.dataset, "train", cfg.data.root, cfg.data.image_size)
    train_index, held_index = held_out_split(images.targets, cfg.monitor.held_out_per_class, cfg.seed)
    if cfg.data.subset is not None:
        train_index = train_index[: cfg.data.subset]
    plan = resolve_views(cfg.views)
    views = CropViews(plan) if cfg.device_augment else MultiCropViews(plan)
    device_augment = GpuViewAugment(plan) if cfg.device_augment else None
    batch_per_process = cfg.batch_size // ctx.world_size
    if batch_per_process * ctx.world_size != cfg.batch_size:
        raise ConfigError(
            f"config key 'batch_size': {cfg.batch_size} is not divisible by {ctx.world_size} processes"
        )
    loader, sampler = build_loader(
        IndexedImages(images, train_index),
        views,
        batch_per_process,
        ctx.rank,
        ctx.world_size,
        cfg.seed,
        cfg.data.num_workers,
        cfg.data.on_corrupt_image == "skip",
        ctx.device.type == "cuda",
    )
    return RunData(images, train_index, held_index, loader, sampler, device_augment)


@dataclass
class Run:
    """What the epochs train and a checkpoint saves, with the settings every step reads."""

    cfg: PretrainConfig
    ctx: distributed.Context
    run_dir: Path
    provenance: dict  # the resolved config, its hash and the git commit: in every checkpoint and record
    method: MultiCropMethod
    model: nn.Module  # the method, wrapped in DistributedDataParallel under torchrun
    method_config: dict  # method.cfg as it trains (family defaults, SwAV's shortened queue), named
    optimizer: torch.optim.Optimizer
    schedules: Schedules
    scaler: torch.amp.GradScaler
    probe: OnlineProbe | None
    total_steps: int
    global_step: int = 0  # optimiser steps taken, over all epochs
    saved_step: int | None = None  # the global step whose weights last.pth holds, once saved or resumed
    metrics: dict = field(default_factory=dict)  # of the last finished epoch
    resumed_from: Path | None = None  # the checkpoint this run resumed, for its banner

    @property
    def budget_spent(self) -> bool:
        """The step budget ``max_steps`` is used up."""
        return self.cfg.max_steps is not None and self.global_step >= self.cfg.max_steps

    @property
    def last_path(self) -> Path:
        return self.run_dir / "last.pth"


def build_run(
    cfg: PretrainConfig, ctx: distributed.Context, run_dir: Path, steps_per_epoch: int, num_classes: int
) -> Run:
    """The method on this process's device (under DDP when distributed), its optimiser, schedules,
    gradient scaler and the online linear probe."""
    method = build_run_method(cfg, ctx.world_size)
    if cfg.method_name == "swav" and method.cfg.queue_length != cfg.method.queue_length:
        say(
            f"method.queue_length {cfg.method.queue_length} -> {method.cfg.queue_length}: SwAV's queue "
            f"holds whole global batches of {cfg.batch_size} (SwAV's main_swav.py), "
            f"{method.queue.shape[1]} rows per process",
            enabled=ctx.is_main,
        )
    method_config = {"name": cfg.method_name, **to_dict(method.cfg)}
    if cfg.channels_last:
        method = method.to(memory_format=torch.channels_last)
    if ctx.distributed and cfg.sync_bn and ctx.device.type == "cuda":
        method = nn.SyncBatchNorm.convert_sync_batchnorm(method)  # gloo has no SyncBN: per-process BN on CPU
    method.to(ctx.device)
    # broadcast_buffers=False: SwAV's queue is per process (as in SwAV), not rank 0's copied to all.
    model = (
        DistributedDataParallel(
            method,
            device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None,
            broadcast_buffers=False,
        )
        if ctx.distributed
        else method
    )
    optimizer = build_optimizer(method, cfg.optim)
    schedules = build_schedules(cfg.optim, cfg.epochs, steps_per_epoch, cfg.batch_size)
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=cfg.amp == "fp16")
    probe = (
        OnlineProbe(get_spec(cfg.backbone).feature_dim, num_classes, ctx.device)
        if cfg.monitor.online_linear
        else None
    )
    return Run(
        cfg,
        ctx,
        run_dir,
        _provenance(cfg),
        method,
        model,
        method_config,
        optimizer,
        schedules,
        scaler,
        probe,
        total_steps=cfg.epochs * steps_per_epoch,
    )


def build_run_method(cfg: PretrainConfig, n_processes: int) -> MultiCropMethod:
    """The method as a run of ``n_processes`` processes trains it: the config's student stochastic
    depth, per-process state (SwAV's queue) sized for the global batch."""
    return build_method(
        cfg.method_name,
        cfg.backbone,
        cfg.method,
        drop_path_rate=cfg.drop_path_rate,
        layout=RunLayout(cfg.batch_size, n_processes),
    )


def resolved_yaml(cfg: PretrainConfig) -> str:
    """The config as the run uses it (every default filled in, the method named), as YAML."""
    return yaml.safe_dump(_provenance(cfg)["config"], sort_keys=False)


def _provenance(cfg: PretrainConfig) -> dict:
    """The resolved config (its method section named), the config's hash and the git commit."""
    plain_config = to_dict(cfg)
    plain_config["method"] = {"name": cfg.method_name, **plain_config["method"]}
    return {"config": plain_config, "config_hash": config_hash(plain_config), "git_commit": git_commit()}


# ---- resume and save --------------------------------------------------------------------------------


def resume(run: Run) -> tuple[int, int]:
    """Load the checkpoint ``resume`` names (if any) into ``run``; returns the (epoch, step in epoch)
    to start from."""
    ctx = run.ctx
    resume_path = _resume_path(run.cfg, run.run_dir)
    if ctx.is_main:  # a kill mid-save leaves a partial temp file beside the whole checkpoint
        for stale in remove_stale_temp_files(run.run_dir):
            say(f"removed {stale.name}, left by a run killed while saving")
    if resume_path is None:
        return 0, 0
    state = schema.load(resume_path)
    broken = first_non_finite(state["method_state"])
    if broken is not None:  # written before checkpoints were checked: it would be NaN at the first step
        raise ResumeError(
            f"refusing to resume {resume_path}: its tensor method_state.{broken} is NaN or infinite; "
            "resume from an earlier checkpoint (resume=PATH), or resume=never to start over"
        )
    differences = schema.model_differences(state["config"], run.provenance["config"])
    if differences:
        raise ResumeError(
            f"refusing to resume {resume_path}: the config changes the model or method:\n  "
            + "\n  ".join(differences)
            + "\nuse a new output_dir, or resume=never to start over"
        )
    run.method.load_state_dict(state["method_state"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scaler.load_state_dict(state["grad_scaler"])
    if run.probe is not None and state.get("online_probe"):
        run.probe.load_state_dict(state["online_probe"])
    set_rng_state(state["rng"])
    run.global_step = state["global_step"]
    run.saved_step = run.global_step if resume_path == run.last_path else None
    run.resumed_from = resume_path
    return state["epoch"], state["step_in_epoch"]


def save_checkpoint(run: Run, path: Path, epoch: int, step_in_epoch: int) -> Path:
    """A checkpoint to resume at (``epoch``, ``step_in_epoch``), with the backbones under torchvision /
    timm names and the run's provenance (docs/checkpoints.md), written atomically to ``path``."""
    method, probe = run.method, run.probe
    teacher = getattr(method, "teacher_backbone", None)
    state = {
        "student_backbone": _cpu_state(method.student_backbone),
        "teacher_backbone": _cpu_state(teacher) if teacher is not None else None,
        "method_state": _cpu_state(method),
        "method_config": run.method_config,
        "optimizer": run.optimizer.state_dict(),
        "grad_scaler": run.scaler.state_dict(),
        "online_probe": probe.state_dict() if probe is not None else None,
        "epoch": epoch,
        "step_in_epoch": step_in_epoch,
        "global_step": run.global_step,
        "rng": rng_state(),
        "metrics": run.metrics,
        "method": run.cfg.method_name,
        "backbone": run.cfg.backbone,
        "recipe": run.cfg.recipe,
        **run.provenance,
    }
    stop_if_not_finite(run, state, path)
    schema.save(path, state)
    if path == run.last_path:
        run.saved_step = run.global_step
    return path


def stop_if_not_finite(run: Run, state: dict, unsaved: Path) -> None:
    """Stop the run, as a NaN loss does, when a floating tensor of ``state`` is NaN or infinite: the
    last step's update overflowed, and ``unsaved`` is not written from it (the loss that would show it
    is only computed at the next step)."""
    broken = first_non_finite(state)
    if broken is not None:
        raise NonFiniteWeightsError(
            f"{broken} is NaN or infinite after the update of global step {run.global_step - 1} "
            f"(lower optim.base_lr, or set optim.clip_grad). The run stopped without saving this state to "
            f"{unsaved.name}; {last_good_checkpoint(run)}"
        )


def last_good_checkpoint(run: Run) -> str:
    """Where a run stopped by a NaN or infinity can resume from: every checkpoint it wrote was checked
    finite (:func:`stop_if_not_finite`), but one saved just before this step holds the very weights the
    NaN loss was computed from (an exact resume meets it again)."""
    if not run.last_path.exists():
        return "no checkpoint was written yet"
    if run.saved_step == run.global_step:
        return (
            f"its last checkpoint, {run.last_path}, holds the weights this loss was computed from, so "
            "resuming it meets the same loss: start over (resume=never) or from an earlier "
            "checkpoint_epochNNNN.pth (resume=PATH), with a lower optim.base_lr"
        )
    return f"the last good checkpoint is {run.last_path}"


# ---- epochs -----------------------------------------------------------------------------------------


def train_one_epoch(
    run: Run, data: RunData, epoch: int, first_batch: int, logger: RunLogger, stop: StopSignals
) -> float | None:
    """Steps ``first_batch`` onwards of ``epoch``, refreshing last.pth every ``checkpoint.every_steps``.

    Returns the last step's loss when the epoch ran to its end, and None when the step budget
    (``max_steps``) ran out inside it, after saving last.pth at that step. A stop signal ends the
    process after the step it came in, with last.pth saved at that step.
    """
    cfg, ctx = run.cfg, run.ctx
    steps_per_epoch = data.sampler.steps_per_epoch
    data.sampler.set_epoch(epoch, first_batch)
    run.method.train()
    bar = progress(
        timed(data.loader),
        f"epoch {epoch + 1}/{cfg.epochs}",
        steps_per_epoch - first_batch,
        enabled=ctx.is_main,
    )
    tick = time.perf_counter()
    for step_in_epoch, (data_wait_s, (batch_views, labels, skipped)) in enumerate(bar, start=first_batch):
        batch_views = [v.to(ctx.device, non_blocking=True) for v in batch_views]
        if data.device_augment is not None:
            batch_views = data.device_augment(batch_views)
        if cfg.channels_last:
            batch_views = [v.contiguous(memory_format=torch.channels_last) for v in batch_views]
        out, values = train_step(run, batch_views, labels, epoch, step_in_epoch)

        seconds, tick = time.perf_counter() - tick, time.perf_counter()
        images = len(labels) * ctx.world_size
        bar.set_postfix(
            loss=f"{out.loss.item():.4f}", lr=f"{values.lr:.2e}", img_s=f"{images / max(seconds, 1e-9):.0f}"
        )
        epoch_done = step_in_epoch + 1 == steps_per_epoch
        logger.step(
            run.global_step,
            epoch,
            out.terms,
            values,
            images,
            seconds,
            data_wait_s,
            skipped,
            last=epoch_done or run.budget_spent,
        )
        save_now = run.budget_spent or _every(cfg.checkpoint.every_steps, step_in_epoch + 1)
        if ctx.is_main and save_now and not epoch_done:  # an epoch's end saves in end_epoch
            save_checkpoint(run, run.last_path, epoch, step_in_epoch + 1)
        if run.budget_spent:
            break
        if not epoch_done and stop.requested():  # at an epoch's last step, train() stops after end_epoch
            if ctx.is_main and not save_now:
                save_checkpoint(run, run.last_path, epoch, step_in_epoch + 1)
            bar.close()
            logger.close()
            stop.stop(
                f"pre-training after global step {run.global_step} (epoch {epoch + 1}, step "
                f"{step_in_epoch + 1})",
                run.last_path,
            )
    bar.close()
    return out.loss.item() if epoch_done else None


def timed(batches):
    """Each batch with the seconds spent blocked waiting for it: the time the loader's workers did not
    keep up (DINO's MetricLogger "data" time; not synchronised with the device, whose queued work
    may still run meanwhile). The rest of a step's seconds is the step itself."""
    start = time.perf_counter()
    iterator = iter(batches)  # starts the loader's workers: the first batch waits for them too
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        yield time.perf_counter() - start, batch
        start = time.perf_counter()  # the loop asks for the next batch


def train_step(run: Run, views: list[torch.Tensor], labels: torch.Tensor, epoch: int, step_in_epoch: int):
    """One optimiser step (and the teacher's EMA, the online probe's step) on views on the device;
    returns the method's output and the step's scheduled values."""
    cfg, method, optimizer, scaler = run.cfg, run.method, run.optimizer, run.scaler
    values = run.schedules.apply(optimizer, run.global_step)
    method.normalize_prototypes()  # SwAV: L2-normalised prototypes every step (docs/recipes.md)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp)
    with torch.autocast(run.ctx.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        out = run.model(views, epoch)
    if not math.isfinite(out.loss.item()):
        raise NonFiniteLossError(
            f"loss is {out.loss.item()} at epoch {epoch}, step {step_in_epoch} (global step "
            f"{run.global_step}); loss terms: {out.terms}. The run stopped; {last_good_checkpoint(run)}"
        )
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(out.loss).backward()
    if cfg.optim.clip_grad is not None:
        scaler.unscale_(optimizer)
        clip_gradients(method, cfg.optim.clip_grad)
    method.cancel_frozen_gradients(epoch)  # DINO last layer / SwAV prototypes in epoch 1
    scaler.step(optimizer)
    scaler.update()
    method.update_teacher(method.teacher_momentum(run.global_step, run.total_steps))
    if run.probe is not None:
        run.probe.step(method.student_backbone, views[0], labels.to(run.ctx.device), values.lr)
    run.global_step += 1
    return out, values


def end_epoch(run: Run, data: RunData, epoch: int, loss: float, logger: RunLogger) -> None:
    """The epoch's monitor values (kNN, online probe), its log line, last.pth and, every
    ``checkpoint.every_epochs`` and at the last epoch, checkpoint_epochNNNN.pth."""
    cfg, ctx = run.cfg, run.ctx
    # before the monitor, which would score weights the last update broke, on every process
    stop_if_not_finite(run, {"method_state": run.method.state_dict()}, run.last_path)
    metrics = {"epoch": epoch + 1, "loss": loss}
    if ctx.is_main and _every(cfg.monitor.knn_every_epochs, epoch + 1):
        knn_top1 = monitor_knn(
            cfg, run.method.student_backbone, data.images, data.train_index, data.held_index, ctx.device
        )
        if knn_top1 is not None:
            metrics["knn_top1_heldout"] = knn_top1
    if run.probe is not None:
        metrics["online_linear_top1"] = run.probe.epoch_accuracy()
    throughput = logger.epoch(epoch + 1, metrics)
    values = ", ".join(f"{k} {v:.4g}" for k, v in {**metrics, **throughput}.items() if k != "epoch")
    say(f"epoch {epoch + 1}/{cfg.epochs}: {values}", enabled=ctx.is_main)
    run.metrics = metrics
    if ctx.is_main:
        save_checkpoint(run, run.last_path, epoch + 1, 0)
        if _every(cfg.checkpoint.every_epochs, epoch + 1) or epoch + 1 == cfg.epochs:
            save_checkpoint(run, run.run_dir / f"checkpoint_epoch{epoch + 1:04d}.pth", epoch + 1, 0)
    distributed.barrier()


# ---- pieces the loop uses ---------------------------------------------------------------------------


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


def monitor_knn(cfg: PretrainConfig, backbone, images, train_index, held_index, device) -> float | None:
    """The authors' online monitor: weighted 20-NN (T 0.07) of held-out training images; None (no
    number, said in one line) where the bank holds fewer images than ``monitor.knn_k``, since a k-NN
    over fewer neighbours would be recorded as the 20-NN it is not."""
    transform = centre_crop_transform(cfg.views.global_size, "bicubic", cfg.views.mean, cfg.views.std)
    bank_index = (
        train_index if cfg.monitor.knn_bank_size is None else train_index[: cfg.monitor.knn_bank_size]
    )
    skip = cfg.data.on_corrupt_image == "skip"
    bank, bank_labels = extract_features(
        backbone, IndexedImages(images, bank_index, transform), device, skip_unreadable=skip
    )
    queries, query_labels = extract_features(
        backbone, IndexedImages(images, held_index, transform), device, skip_unreadable=skip
    )
    num_classes, k, temperature = len(images.classes), cfg.monitor.knn_k, cfg.monitor.knn_temperature
    if len(bank) < k:
        say(
            f"kNN monitor skipped: its bank holds {len(bank)} readable images, fewer than monitor.knn_k={k} "
            "(more training images, or a smaller monitor.knn_k)"
        )
        return None
    return knn_evaluate(bank, bank_labels, queries, query_labels, num_classes, k, temperature).top1


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
        """The classifier, its optimiser and the epoch's running counts (a run resumed mid-epoch
        reports the same epoch accuracy as an uninterrupted one)."""
        return {
            "linear": self.linear.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "correct": self.correct,
            "seen": self.seen,
        }

    def load_state_dict(self, state: dict) -> None:
        self.linear.load_state_dict(state["linear"])
        self.optimizer.load_state_dict(state["optimizer"])
        # checkpoints written before the counts were saved resume counting from zero, as they did
        self.correct, self.seen = state.get("correct", 0), state.get("seen", 0)


class RunLogger:
    """TensorBoard scalars and a CSV log (``log.csv``) in the run folder, mirrored to Weights & Biases
    when ``$WANDB_PROJECT`` is set (wandb's own variable; ``pip install wandb``).

    A row every ``every_steps`` optimiser steps (counted over the whole run, so a resumed run logs the
    same steps as an uninterrupted one) and at every step ``step(..., last=True)`` marks: the last of
    an epoch (whose loss the epoch's metrics report) and of the run. A row holds that step's loss
    terms, LR and weight decay, the images per second and the seconds spent waiting for data (with
    their fraction of the step time) since the previous row, and the unreadable images skipped so far.
    A resumed run appends rows under its log.csv's header (one written before a column existed keeps
    its columns). The epoch's line (:meth:`epoch`) and the end of a run stopped inside an epoch
    (:meth:`close`) summarise the images per second and data-wait fraction of their steps.
    """

    def __init__(
        self, run_dir: Path, enabled: bool, every_steps: int, provenance: dict | None = None
    ) -> None:
        self.enabled = enabled
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        run_dir.mkdir(parents=True, exist_ok=True)
        self.wandb = _start_wandb(run_dir, provenance or {}) if os.environ.get("WANDB_PROJECT") else None
        self.writer = SummaryWriter(str(run_dir / "tensorboard"))
        self.csv_path = run_dir / "log.csv"
        self.every_steps = every_steps
        self.fieldnames: list[str] | None = None  # log.csv's columns, once known
        self.skipped = 0
        self.since_row, self.since_summary = Throughput(), Throughput()

    def step(
        self,
        step: int,
        epoch: int,
        terms: dict,
        values,
        images: int,
        seconds: float,
        data_wait_s: float,
        skipped: int,
        last: bool = False,
    ) -> None:
        if not self.enabled:
            return
        self.skipped += skipped
        self.since_row.add(images, seconds, data_wait_s)
        self.since_summary.add(images, seconds, data_wait_s)
        if not last and step % self.every_steps != 0:
            return
        row = {
            "step": step,
            "epoch": epoch,
            **{k: float(v) for k, v in terms.items()},
            "lr": values.lr,
            "weight_decay": values.weight_decay,
            **self.since_row.rates(),
            "data_wait_s": self.since_row.data_wait_s,
            "skipped_images": self.skipped,
        }
        self.since_row = Throughput()
        if self.fieldnames is None:
            self.fieldnames = _csv_header(self.csv_path) or list(row)
        new = not self.csv_path.exists() or self.csv_path.stat().st_size == 0
        with open(self.csv_path, "a", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=self.fieldnames, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)
        for key, value in row.items():
            if key not in ("step", "epoch"):
                self.writer.add_scalar(f"train/{key}", value, step)

    def epoch(self, epoch: int, metrics: dict) -> dict:
        """Writes the epoch's monitor values; returns the images per second and data-wait fraction of
        its steps (since the previous summary; {} on a process that does not log)."""
        if not self.enabled:
            return {}
        for key, value in metrics.items():
            if key != "epoch":
                self.writer.add_scalar(f"monitor/{key}", value, epoch)
        throughput, self.since_summary = self.since_summary.rates(), Throughput()
        for key, value in throughput.items():
            self.writer.add_scalar(f"epoch/{key}", value, epoch)
        return throughput

    def close(self) -> None:
        if self.enabled:
            if self.since_summary.steps:  # the run stopped inside an epoch (max_steps, a signal)
                rates = ", ".join(f"{k} {v:.4g}" for k, v in self.since_summary.rates().items())
                say(f"last {self.since_summary.steps} steps (an unfinished epoch): {rates}")
            self.writer.close()
            if self.wandb is not None:
                self.wandb.finish()


@dataclass
class Throughput:
    """Images, seconds and seconds spent waiting for data, summed over some steps."""

    steps: int = 0
    images: int = 0
    seconds: float = 0.0
    data_wait_s: float = 0.0

    def add(self, images: int, seconds: float, data_wait_s: float) -> None:
        self.steps += 1
        self.images += images
        self.seconds += seconds
        self.data_wait_s += data_wait_s

    def rates(self) -> dict:
        seconds = max(self.seconds, 1e-9)
        return {"images_per_s": self.images / seconds, "data_wait_fraction": self.data_wait_s / seconds}


def _csv_header(path: Path) -> list[str] | None:
    """The columns of the CSV file at ``path``; None if it does not exist or is empty."""
    if not path.exists():
        return None
    with open(path, newline="") as file:
        return next(csv.reader(file), None)


def _start_wandb(run_dir: Path, provenance: dict):
    """A W&B run that mirrors the TensorBoard scalars (wandb's ``sync_tensorboard``: one set of logging
    calls, two sinks); a resumed run continues its W&B run (same id: the run folder and config hash)."""
    try:
        import wandb
    except ImportError as error:
        raise ConfigError("$WANDB_PROJECT is set but wandb is not installed: pip install wandb") from error
    run_id = f"{run_dir.name}-{provenance.get('config_hash', '')[:8]}".strip("-")
    return wandb.init(
        project=os.environ["WANDB_PROJECT"],
        id=run_id,
        name=run_dir.name,
        dir=str(run_dir),
        config=provenance.get("config", {}),
        sync_tensorboard=True,
        resume="allow",
    )


def _write_records(cfg: PretrainConfig, provenance: dict, metrics: dict, run_dir: Path) -> Path:
    details = {
        "alpha": cfg.method.alpha,
        "exclusion_rule": cfg.optim.exclusion_rule,
        "views": provenance["config"]["views"],
        "run_dir": str(run_dir),
        "pretrain_budget": pretrain_budget(provenance["config"]),
    }
    common = dict(
        run_id=pretrain_run_id(cfg, provenance["config_hash"]),
        stage="pretrain",
        method=cfg.method_name,
        recipe=cfg.recipe,
        backbone=cfg.backbone,
        pretrain_epochs=metrics["epoch"],
        dataset=cfg.data.dataset,
        branch="student",
        config_hash=provenance["config_hash"],
        git_commit=provenance["git_commit"],
        details=details,
        seed=cfg.seed,
    )
    monitors = {"knn_top1_heldout": "online-knn20-heldout", "online_linear_top1": "online-linear-global1"}
    rows = [
        Record(**common, protocol=monitors[metric], metric=metric, value=metrics[metric])
        for metric in monitors
        if metric in metrics
    ]
    return append_records(rows, cfg.records_dir)


def pretrain_run_id(cfg: PretrainConfig, config_hash: str) -> str:
    """One run, one records file: the experiment, its seed and the hash of its resolved config (which
    holds the output folder), so another seed or folder never replaces this run's rows."""
    return f"pretrain-{cfg.experiment}-seed{cfg.seed}-{config_hash[:8]}"
