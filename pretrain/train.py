"""The pre-training loop, for ``python -m lowssl.pretrain`` (pretrain/__main__.py).

Reads top to bottom like DINO's ``main_dino.py``: :func:`train` builds the data (:func:`build_data`) and
the method, optimiser and schedules (:func:`build_run`), resumes (:mod:`pretrain.checkpointing`), then
runs the epochs: :func:`train_one_epoch` (its steps, :func:`train_step`), then :func:`end_epoch` (the
monitors of :mod:`pretrain.monitors`, the checkpoints). One process per device under torchrun (DDP:
NCCL on GPUs, gloo on CPU).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from lowssl import distributed
from lowssl.backbones import get_spec
from lowssl.config import ConfigError, config_hash, to_dict
from lowssl.data import IndexedImages, build_dataset, held_out_split
from lowssl.io import atomic_write_text, git_commit
from lowssl.perf import MemoryFormatChoice, Workload, choose_memory_format, training_step
from lowssl.pretrain.checkpointing import last_good_checkpoint, resume, save_checkpoint, stop_if_not_finite
from lowssl.pretrain.config import PretrainConfig
from lowssl.pretrain.loader import build_loader
from lowssl.pretrain.methods import MultiCropMethod, RunLayout, build_method
from lowssl.pretrain.monitors import (
    MONITOR_PROTOCOLS,
    OnlineProbe,
    monitor_knn,
    records_file,
    write_records,
)
from lowssl.pretrain.optim import build_optimizer, build_schedules, clip_gradients
from lowssl.pretrain.run import Run, RunData
from lowssl.pretrain.run_logger import RunLogger, first_line, print_last_line
from lowssl.pretrain.views import CropViews, GpuViewAugment, MultiCropViews, resolve_views
from lowssl.progress import progress, say
from lowssl.run_lock import run_folder_lock
from lowssl.stopping import NonFiniteLossError, StopSignals

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


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
        atomic_write_text(
            run_dir / "config.yaml", resolved_yaml(cfg) + memory_format_comment(run.memory_format)
        )

    # ---- resume -----------------------------------------------------------------------------------
    start_epoch, start_batch = resume(run)
    records_path = records_file(cfg, run.provenance["config_hash"])
    say(first_line(run, data.sampler.steps_per_epoch, records_path), enabled=ctx.is_main)
    say(run.memory_format.line(f"pretrain {cfg.backbone}"), enabled=ctx.is_main)
    if start_epoch >= cfg.epochs or run.budget_spent:  # a finished run: resuming it trains nothing more
        print_last_line(run, "complete", data.sampler.steps_per_epoch, None, started)
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
    if ctx.is_main and run.metrics.keys() & MONITOR_PROTOCOLS.keys():
        records_written = write_records(
            cfg, run.provenance, run.metrics, run_dir, run.memory_format.details()
        )
    print_last_line(
        run,
        "max_steps" if run.budget_spent else "done",
        data.sampler.steps_per_epoch,
        records_written,
        started,
    )
    return run.metrics


# ---- set-up -----------------------------------------------------------------------------------------


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


def build_run(
    cfg: PretrainConfig, ctx: distributed.Context, run_dir: Path, steps_per_epoch: int, num_classes: int
) -> Run:
    """The method on this process's device (under DDP when distributed), its optimiser, schedules,
    gradient scaler and the online linear probe."""
    method = build_run_method(cfg, ctx.world_size)
    changes = method.config_changes(cfg.method)
    if changes is not None:
        say(changes, enabled=ctx.is_main)
    method_config = {"name": cfg.method_name, **to_dict(method.cfg)}
    memory_format = choose_run_memory_format(cfg, ctx, method)
    if memory_format.channels_last:
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
        memory_format,
        total_steps=cfg.epochs * steps_per_epoch,
    )


def choose_run_memory_format(
    cfg: PretrainConfig, ctx: distributed.Context, method: MultiCropMethod
) -> MemoryFormatChoice:
    """``channels_last`` true / false, or with "auto" the faster format of this run's step (forward and
    backward of the method on this process's batch of views, at its precision), measured on a copy
    of the method before anything trains (lowssl.perf: cached per machine, rank 0's choice for all)."""

    def workload() -> Workload:
        plan = resolve_views(cfg.views)
        batch = cfg.batch_size // ctx.world_size
        shapes = [(batch, 3, plan.global_size, plan.global_size)] * 2 + [
            (batch, 3, plan.local_size, plan.local_size)
        ] * plan.n_local
        step_for = training_step(
            method, shapes, ctx.device, lambda trial, views: trial(views, 0).loss, AMP_DTYPES.get(cfg.amp)
        )
        task = {"task": f"pretrain-step:{cfg.method_name}", "backbone": cfg.backbone, "precision": cfg.amp}
        return Workload(step_for, {**task, "shapes": shapes}, batch)

    family = get_spec(cfg.backbone).family
    what = f"pretrain {cfg.backbone}"
    # printed after the run's first line (_train), not here where it is chosen
    return choose_memory_format(cfg.channels_last, family, workload, ctx.device, what, announce=False)


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


def memory_format_comment(choice: MemoryFormatChoice) -> str:
    """The memory format this run chose, as YAML comment lines below its config.yaml: the config keeps
    what it asked (``channels_last: auto``, its hash the same on every machine), the comment what ran."""
    measured = json.dumps(choice.measured) if choice.measured is not None else "not measured"
    return f"# memory format: {choice.name} ({choice.how}); images/s measured: {measured}\n"


def _provenance(cfg: PretrainConfig) -> dict:
    """The resolved config (its method section named), the config's hash and the git commit."""
    plain_config = to_dict(cfg)
    plain_config["method"] = {"name": cfg.method_name, **plain_config["method"]}
    return {"config": plain_config, "config_hash": config_hash(plain_config), "git_commit": git_commit()}


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
        if run.memory_format.channels_last:
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
    amp_dtype = AMP_DTYPES.get(cfg.amp)
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


def _every(every: int, count: int) -> bool:
    return every > 0 and count % every == 0
