"""Semi-supervised fine-tuning on a 1% / 10% label subset (paper App. A), one process per device.

Reads top to bottom: protocol, network (a checkpoint without a DINO head fails here, before any
data is read), labelled subset, data, optimiser, resume, epochs, records. Under torchrun the model is
wrapped in DDP (SyncBN on GPUs, as the authors' cls_trainer.py does) and every process takes its
share of each batch (semisup/data.py).

The learning rate is set once per epoch, as the authors' cls_trainer.py does (it reads its per-step
cosine schedule at the epoch's first step). The run's state is saved atomically to
``<output_dir>/last.pth`` after every epoch (and where ``max_steps`` stops it): weights, optimiser,
epoch, step, evaluations, RNG; ``resume auto`` continues from it exactly.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset

from lowssl import distributed
from lowssl.backbones import build_backbone
from lowssl.checkpoints import open_from_arguments
from lowssl.config import ConfigError, changed_values, config_hash, derived_name, parse_overrides, to_dict
from lowssl.data import (
    PAPER_HELD_OUT_PER_CLASS,
    IndexedImages,
    SeededSamples,
    build_dataset,
    default_workers,
    held_out_split,
)
from lowssl.distributed import Context
from lowssl.io import atomic_torch_save, first_non_finite, git_commit, load_checkpoint
from lowssl.metrics import topk_hits
from lowssl.paths import home
from lowssl.progress import progress, say
from lowssl.records import Record, append_records, default_runs_dir
from lowssl.released import record_details
from lowssl.rng import rng_state, set_rng_state
from lowssl.run_lock import run_folder_lock
from lowssl.stopping import NonFiniteLossError, NonFiniteWeightsError, ResumeError, StopSignals
from lowssl.subject import Subject
from semisup.data import EpochOrder, eval_transform, train_transform
from semisup.model import SemiSupervisedNet, build_head
from semisup.protocols import SemisupProtocol, load_protocol
from semisup.subsets import SUBSETS, LabelSubset, load_subset, subset_path, write_subset

FORMAT = "lowssl-semisup-v1"
#: The override ``epochs=N``: the epochs of the subset the run fine-tunes on (``epochs_1pct`` or
#: ``epochs_10pct`` of the protocol, which is known once the subset is).
SUBSET_EPOCHS = "epochs"


@dataclass
class FinetuneArgs:
    """What ``python -m semisup finetune`` was asked for (protocol values live in the protocol's YAML)."""

    subset: str  # "1pct", "10pct" or a list file
    dataset: str = "fashion-mnist"
    data_root: str | None = None
    checkpoint: str | Path | None = None
    random_init: bool = False  # the baseline: the same network from random initialisation
    arch: str | None = None
    checkpoint_format: str | None = None
    branch: str | None = None
    trust_checkpoint: bool = False
    new_head: bool = False  # new MLP layers instead of the checkpoint's head
    protocol: str = "paper"
    overrides: list[str] = field(default_factory=list)  # key=value protocol overrides; see SUBSET_EPOCHS
    fraction: float | None = None  # which subset a list file is (default: its header or its size)
    expected_count: int | None = None  # accept a list of another size than floor(fraction x N)
    subset_seed: int = 0  # seed of a generated subset
    output_dir: str | None = None
    records_dir: str | None = None
    resume: str = "auto"  # "auto", "never" or a path
    max_steps: int | None = None  # smoke runs: stop after this many optimiser steps in total
    max_eval_images: int | None = None  # smoke runs: evaluate on the first N evaluation images only
    held_out: bool = False  # evaluate on images held out of train (minus the labelled ones), not val
    held_out_per_class: int = PAPER_HELD_OUT_PER_CLASS
    workers: int = field(default_factory=default_workers)
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.random_init == (self.checkpoint is not None):
            raise ConfigError("give either --checkpoint PATH or --random-init --arch ARCH")
        if self.random_init and self.arch is None:
            raise ConfigError("--random-init needs --arch (e.g. resnet18)")

    def protocol_overrides(self) -> tuple[list[str], str | None]:
        """(the overrides of the protocol's own keys, the value of ``epochs=N`` if given)."""
        own, epochs = [], None
        for override in self.overrides:
            key, _, value = override.partition("=")
            if key.strip() == SUBSET_EPOCHS:
                epochs = value
            else:
                own.append(override)
        return own, epochs

    def recorded_overrides(self) -> dict:
        """The overrides and smoke limits this run sets, as its records list them."""
        limits = {name: getattr(self, name) for name in ("max_steps", "max_eval_images")}
        return {**parse_overrides(self.overrides), **{k: v for k, v in limits.items() if v is not None}}


def finetune(args: FinetuneArgs) -> dict:
    """Run (or resume) one fine-tuning; returns the reported metrics and where the run lives. Rank 0
    holds the run folder's lock (lowssl.run_lock) from when the folder is known; SIGTERM / SIGUSR1 /
    SIGUSR2 stop the run at a step, saved (lowssl.stopping)."""
    with contextlib.ExitStack() as held:
        return _finetune(args, held)


def _finetune(args: FinetuneArgs, held: contextlib.ExitStack) -> dict:
    ctx = distributed.init(args.device)
    if ctx.device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    overrides, subset_epochs = args.protocol_overrides()
    protocol = load_protocol(args.protocol, overrides)
    if protocol.batch_size % ctx.world_size:
        raise ConfigError(
            f"batch size {protocol.batch_size} does not split evenly over {ctx.world_size} processes"
        )

    # ---- network: fails on a checkpoint without a DINO head before any data is read ----------------
    torch.manual_seed(protocol.seed)
    if args.random_init:
        backbone, opened, arch = build_backbone(args.arch), None, args.arch
        subject = Subject.random_init(arch, protocol.seed, f"random-init:{arch}")
        head_source = "new"
    else:
        opened = open_from_arguments(args)
        backbone, arch = opened.build_backbone(), opened.arch
        subject = Subject.of_checkpoint(opened)
        head_source = "new" if args.new_head else "checkpoint"
    if protocol.network == "frozen-linear":
        head_source = "none"
    head, width = build_head(arch, head_source, opened, args.checkpoint, protocol.new_head_hidden_dim)
    train_images = build_dataset(args.dataset, "train", args.data_root, protocol.image_size)
    model = SemiSupervisedNet(
        backbone,
        head,
        width,
        len(train_images.classes),
        protocol.classifier_init_std,
        freeze_backbone=protocol.network == "frozen-linear",
    )

    # ---- labelled subset -----------------------------------------------------------------------------
    run_dir = Path(args.output_dir or home() / "runs" / "semisup" / run_name(args, arch))
    held.enter_context(run_folder_lock(run_dir, ctx.is_main))
    list_file, generate = subset_path(args.subset, train_images, args.dataset, run_dir, args.subset_seed)
    if generate and ctx.is_main:
        write_subset(list_file, train_images, args.dataset, SUBSETS[args.subset], args.subset_seed)
    distributed.barrier()
    subset = load_subset(list_file, train_images, args.fraction, args.expected_count)
    say(subset.report(), enabled=ctx.is_main)
    if subset_epochs is not None:
        protocol = load_protocol(args.protocol, [*overrides, f"epochs_{subset.label}={subset_epochs}"])
    epochs = protocol.epochs(subset.label)

    # ---- data ----------------------------------------------------------------------------------------
    batch = protocol.batch_size // ctx.world_size
    labelled = IndexedImages(train_images, subset.indices)
    crops = SeededSamples(labelled, train_transform(protocol), protocol.seed)
    order = EpochOrder(len(crops), batch, ctx.rank, ctx.world_size, protocol.seed)
    loader = DataLoader(
        crops, batch_size=batch, sampler=order, num_workers=args.workers, pin_memory=ctx.device.type == "cuda"
    )
    evaluation = evaluation_set(args, train_images, subset, protocol)

    # ---- model, optimiser ----------------------------------------------------------------------------
    if ctx.distributed and ctx.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(ctx.device)
    trained = (
        DistributedDataParallel(model, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None)
        if ctx.distributed
        else model
    )
    optimizer = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad],
        lr=protocol.peak_lr(),
        momentum=protocol.momentum,
        nesterov=protocol.nesterov,
        weight_decay=protocol.weight_decay,
    )

    # ---- resume --------------------------------------------------------------------------------------
    identity = {
        "protocol": to_dict(protocol),
        "epochs": epochs,
        "dataset": args.dataset,
        "subset_sha256": subset.sha256,
        "checkpoint_sha256": subject.checkpoint,
        "arch": arch,
        "head_source": head_source,
        "format": opened.format if opened else None,
        "branch": opened.branch if opened else None,
    }
    if args.held_out:  # only then, so that the identity (and config hash) of a run on val is unchanged
        identity["eval_set"] = _eval_set_label(args)
    start_epoch, start_batch, global_step, history = 0, 0, 0, []
    last = run_dir / "last.pth"
    saved_step = None  # the global step whose weights last.pth holds, where this run saved or resumed it
    resume_file = _resume_path(args.resume, run_dir)
    if resume_file is not None:
        state = load_checkpoint(resume_file)
        broken = first_non_finite(state.get("model"))
        if broken is not None:  # written before checkpoints were checked: it would be NaN at the first step
            raise ResumeError(
                f"refusing to resume {resume_file}: its tensor model.{broken} is NaN or infinite; "
                "use --resume never to start over"
            )
        differences = [
            f"{k}: {state['identity'].get(k)!r} -> {v!r}"
            for k, v in identity.items()
            if state["identity"].get(k) != v
        ]
        if differences:
            raise ResumeError(
                f"refusing to resume {resume_file}: it is another run:\n  "
                + "\n  ".join(differences)
                + "\nuse another --output-dir, or --resume never to start over"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        start_epoch, start_batch, global_step, history = (
            state["epoch"],
            state["step_in_epoch"],
            state["global_step"],
            state["history"],
        )
        saved_step = global_step if resume_file == last else None
    # a run resumed where it ended (its epochs done, or its max_steps reached) trains nothing more
    finished = start_epoch >= epochs or (args.max_steps is not None and global_step >= args.max_steps)
    started = (
        f"resumed from {resume_file} at epoch {start_epoch}, step {start_batch}"
        if resume_file is not None
        else "fresh run"
    )
    records_file = Path(args.records_dir or default_runs_dir()) / f"semisup-{run_dir.name}.csv"
    say(
        f"semisup finetune: {started} in {run_dir.absolute()}; {epochs} epochs of {order.steps_per_epoch} "
        f"steps{f', stopping at max_steps={args.max_steps}' if args.max_steps is not None else ''}; "
        f"{ctx.device}{f' x {ctx.world_size} processes' if ctx.distributed else ''}, "
        f"{torch.get_num_threads()} threads; records -> {records_file.absolute()}",
        enabled=ctx.is_main,
    )

    def stop_if_not_finite() -> None:
        """Stop, as a NaN loss does, when the last update left a weight NaN or infinite (the loss that
        would show it is only computed at the next step): nothing is evaluated or saved from it."""
        broken = first_non_finite({"model": model.state_dict(), "optimizer": optimizer.state_dict()})
        if broken is not None:
            raise NonFiniteWeightsError(
                f"{broken} is NaN or infinite after optimiser step {global_step} (lower base_lr). The run "
                f"stopped without saving this state to {last.name}; "
                + _last_good(last, saved_step, global_step)
            )

    def save(epoch: int, step_in_epoch: int) -> None:
        nonlocal saved_step
        stop_if_not_finite()
        if ctx.is_main:
            atomic_torch_save(
                {
                    "format": FORMAT,
                    "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                    "optimizer": optimizer.state_dict(),
                    "epoch": epoch,
                    "step_in_epoch": step_in_epoch,
                    "global_step": global_step,
                    "history": history,
                    "rng": rng_state(),
                    "identity": identity,
                },
                last,
            )
        saved_step = global_step
        distributed.barrier()

    # ---- epochs --------------------------------------------------------------------------------------
    stop = held.enter_context(StopSignals(ctx.device))
    tick = time.perf_counter()
    stopped = False
    for epoch in range(start_epoch, start_epoch if finished else epochs):
        lr = protocol.epoch_lr(epoch, epochs)
        for group in optimizer.param_groups:
            group["lr"] = lr
        first = start_batch if epoch == start_epoch else 0
        order.set_epoch(epoch, first)
        model.train()
        step = first
        bar = progress(loader, f"epoch {epoch + 1}/{epochs}", enabled=ctx.is_main)
        for images, labels in bar:
            loss = F.cross_entropy(trained(images.to(ctx.device, non_blocking=True)), labels.to(ctx.device))
            if not math.isfinite(loss.item()):
                raise NonFiniteLossError(
                    f"loss is {loss.item()} at epoch {epoch + 1}, step {step}; the run stopped; "
                    + _last_good(last, saved_step, global_step)
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step, global_step = step + 1, global_step + 1
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.2e}")
            stopped = args.max_steps is not None and global_step >= args.max_steps
            if stopped:
                break
            if step < order.steps_per_epoch and stop.requested():  # an epoch's end stops after its save
                bar.close()
                save(epoch, step)
                stop.stop(
                    f"fine-tuning after global step {global_step} (epoch {epoch + 1}, step {step})",
                    run_dir / "last.pth",
                )
        bar.close()
        complete = step == order.steps_per_epoch
        message = (
            f"epoch {epoch + 1}/{epochs}{'' if complete else f' (stopped at step {step})'}: "
            f"loss {loss.item():.4f}, lr {lr:.3g}"
        )
        if stopped or epoch + 1 == epochs or (complete and protocol.report == "best"):
            stop_if_not_finite()  # never score weights the last update broke
            top1, top5 = evaluate(model, evaluation, ctx, protocol.eval_batch_size, args.workers)
            history.append({"epoch": epoch + 1, "complete": complete, "top1": top1, "top5": top5})
            message += f", top-1 {top1:.2f}, top-5 {top5:.2f}"
        say(message, enabled=ctx.is_main)
        save(epoch + 1 if complete else epoch, 0 if complete else step)
        if stopped:
            break
        if epoch + 1 < epochs and stop.requested():  # last.pth was saved at this epoch's end
            stop.stop(
                f"fine-tuning after epoch {epoch + 1} (global step {global_step})", run_dir / "last.pth"
            )

    if not history:  # resumed a finished run
        raise ResumeError(f"{resume_file} holds no evaluation; use --resume never to run again")
    result = _reported(history, protocol.report)
    result.update(
        run_dir=str(run_dir),
        seconds=time.perf_counter() - tick,
        epochs=epochs,
        subset=subset.label,
        labelled_images=len(subset.indices),
        eval_images=len(evaluation),
        head_source=head_source,
        arch=arch,
        stopped_by=_stopped_by(finished, stopped, args.max_steps),
    )
    if ctx.is_main:
        result["records"] = str(
            _write_records(args, protocol, subset, subject, identity, result, history, ctx)
        )
    return result


def _stopped_by(finished: bool, stopped: bool, max_steps: int | None) -> str:
    """Why the run ended, for its closing line."""
    if finished:
        return "already complete"
    return f"stopped at max_steps={max_steps}" if stopped else "done"


def _last_good(last: Path, saved_step: int | None, global_step: int) -> str:
    """What a run stopped by a NaN or infinity can resume from: every checkpoint it wrote was checked
    finite, but one saved just before this step holds the very weights the NaN loss was computed from
    (an exact resume meets it again)."""
    if not last.exists():
        return "no checkpoint was written yet"
    if saved_step == global_step:
        return (
            f"its last checkpoint, {last}, holds the weights this loss was computed from, so resuming "
            "it meets the same loss: start over (--resume never) with a lower base_lr"
        )
    return f"the last good checkpoint is {last}"


def evaluation_set(args: FinetuneArgs, train_images, subset: LabelSubset, protocol: SemisupProtocol):
    """The images a run is scored on: val, or with ``--held-out`` images held out of train.

    The held-out images are ``held_out_split``'s, less any the labelled subset holds (a subset drawn
    from all of train meets about fraction x N of them), so a score never counts a labelled image:
    a hyper-parameter is chosen there without touching the val split it is then reported on.
    """
    if args.held_out:
        images = train_images
        held = held_out_split(train_images.targets, args.held_out_per_class)[1]
        indices = np.setdiff1d(held, subset.indices)
    else:
        images = build_dataset(args.dataset, "val", args.data_root, protocol.image_size)
        indices = np.arange(len(images))
    return IndexedImages(images, indices[: args.max_eval_images], eval_transform(protocol))


def _eval_set_label(args: FinetuneArgs) -> str:
    return f"held-out-{args.held_out_per_class}pc" if args.held_out else "val"


@torch.no_grad()
def evaluate(model: nn.Module, images, ctx: Context, batch_size: int, workers: int) -> tuple[float, float]:
    """Top-1 / top-5 (top-min(5, classes)) in percent; each process takes every world_size-th image."""
    model.eval()
    shard = Subset(images, range(ctx.rank, len(images), ctx.world_size))
    counts = torch.zeros(3, dtype=torch.float64, device=ctx.device)  # top-1 hits, top-5 hits, images
    for batch, labels in DataLoader(shard, batch_size=batch_size, num_workers=workers):
        logits = model(batch.to(ctx.device, non_blocking=True))
        labels = labels.to(ctx.device)
        hits = [*topk_hits(logits, labels), torch.tensor(len(labels), device=ctx.device)]
        counts += torch.stack(hits).double()
    if ctx.distributed:
        dist.all_reduce(counts)
    return (100 * counts[0] / counts[2]).item(), (100 * counts[1] / counts[2]).item()


def _reported(history: list[dict], report: str) -> dict:
    """Top-1 / top-5 of the reported evaluation: the best complete epoch ("best") or the last one."""
    complete = [h for h in history if h["complete"]] or history
    best = max(complete, key=lambda h: h["top1"])  # the first of equal epochs
    chosen = best if report == "best" else history[-1]
    return {
        "top1": chosen["top1"],
        "top5": chosen["top5"],
        "reported_epoch": chosen["epoch"],
        "last_top1": history[-1]["top1"],
        "best_top1": best["top1"],
        "best_epoch": best["epoch"],
    }


def run_name(args: FinetuneArgs, arch: str) -> str:
    source = f"random_{arch}" if args.random_init else Path(args.checkpoint).stem
    subset = args.subset if args.subset in ("1pct", "10pct") else Path(args.subset).stem
    head = "_newhead" if args.new_head else ""
    scored = f"_{_eval_set_label(args)}" if args.held_out else ""
    return re.sub(r"[^A-Za-z0-9._-]", "_", f"{source}{head}_{args.protocol}_{args.dataset}_{subset}{scored}")


def _resume_path(resume: str, run_dir: Path) -> Path | None:
    if resume == "never":
        return None
    if resume == "auto":
        path = run_dir / "last.pth"
        return path if path.exists() else None
    if not Path(resume).is_file():
        raise ResumeError(f"resume checkpoint {resume} does not exist")
    return Path(resume)


def _write_records(
    args: FinetuneArgs,
    protocol: SemisupProtocol,
    subset: LabelSubset,
    subject: Subject,
    identity: dict,
    result: dict,
    history: list[dict],
    ctx: Context,
) -> Path:
    overrides = args.recorded_overrides()
    # Values that differ from the protocol's own make another protocol (lowssl.config.derived_name);
    # the subset's epochs are named as the override names them, the other subset's change nothing here.
    base = load_protocol(args.protocol)
    changes = {
        key: value for key, value in changed_values(base, protocol).items() if not key.startswith("epochs_")
    }
    if protocol.epochs(subset.label) != base.epochs(subset.label):
        changes[SUBSET_EPOCHS] = protocol.epochs(subset.label)
    changes.update({key: overrides[key] for key in ("max_steps", "max_eval_images") if key in overrides})
    details = {
        "protocol": to_dict(protocol),  # lowssl.records.recorded_protocol: a changed preset never pools
        "protocol_source": protocol.source,
        "paper_protocol": protocol.paper_protocol and not changes,
        "network": protocol.network,
        "head_source": identity["head_source"],
        "epochs": identity["epochs"],
        "batch_size": protocol.batch_size,
        "peak_lr": protocol.peak_lr(),
        "image_size": protocol.image_size,
        "report": protocol.report,
        "reported_epoch": result["reported_epoch"],
        "last_top1": result["last_top1"],
        "best_top1": result["best_top1"],
        "best_epoch": result["best_epoch"],
        "evaluations": history,
        "overrides": overrides,
        "world_size": ctx.world_size,
        "run_dir": result["run_dir"],
        "eval_set": _eval_set_label(args),
        "eval_images": result["eval_images"],
        **subset.summary(),
        **subject.record_details(),  # pretrain_budget: numbers of different budgets never pool
        **record_details(
            args.checkpoint, identity["checkpoint_sha256"]
        ),  # a released checkpoint: how verified
    }
    common = dict(
        run_id=f"semisup-{Path(result['run_dir']).name}",
        stage="semisup",
        dataset=args.dataset if not args.held_out else f"{args.dataset}/{_eval_set_label(args)}",
        protocol=derived_name(protocol.name, changes),
        config_hash=config_hash(identity),
        git_commit=git_commit(),
        details=details,
        **subject.record_columns(),
    )
    rows = [Record(**common, metric=f"semi_{subset.label}_{k}", value=result[k]) for k in ("top1", "top5")]
    return append_records(rows, args.records_dir)
