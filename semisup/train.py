"""Semi-supervised fine-tuning on a 1% / 10% label subset (paper App. A), one process per device.

Reads top to bottom: protocol, network (a checkpoint without a DINO head fails here, before any
data is read), labelled subset, data, optimiser, resume, epochs, records. Under torchrun the model is
wrapped in DDP (SyncBN on GPUs, as the authors' cls_trainer.py does) and every process takes its
share of each batch (semisup/data.py).

The learning rate is set once per epoch, as the authors' cls_trainer.py does (it reads its per-step
cosine schedule at the epoch's first step). The run's state is saved atomically to
``<output_dir>/last.pth`` after every epoch (and where ``max_steps`` stops it): weights, optimiser,
epoch, step, evaluations, RNG; ``resume auto`` continues from it exactly (semisup/run_state.py).
What the run reports, and its records, are semisup/report.py's.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Subset

from lowssl import distributed
from lowssl.backbones import build_backbone, get_spec
from lowssl.checkpoints import OpenedCheckpoint, open_from_arguments
from lowssl.config import ConfigError, to_dict
from lowssl.data import IndexedImages, SeededSamples, build_dataset, held_out_split
from lowssl.distributed import Context
from lowssl.metrics import topk_hits
from lowssl.paths import home
from lowssl.perf import MemoryFormatChoice, Workload, choose_memory_format, to_memory_format, training_step
from lowssl.progress import progress, say
from lowssl.records import default_runs_dir
from lowssl.run_lock import run_folder_lock
from lowssl.sampler import EpochSampler
from lowssl.semisup.arguments import FinetuneArgs
from lowssl.semisup.data import epoch_order, eval_transform, train_transform
from lowssl.semisup.model import SemiSupervisedNet, build_head
from lowssl.semisup.protocols import SemisupProtocol, load_protocol
from lowssl.semisup.report import reported, write_records
from lowssl.semisup.run_state import RunState
from lowssl.semisup.subsets import SUBSETS, LabelSubset, load_subset, subset_path, write_subset
from lowssl.stopping import ResumeError, StopSignals, resume_path
from lowssl.subject import Subject


def finetune(args: FinetuneArgs) -> dict:
    """Run (or resume) one fine-tuning; returns the reported metrics and where the run lives. Rank 0
    holds the run folder's lock (lowssl.run_lock) from when the folder is known; SIGTERM / SIGUSR1 /
    SIGUSR2 stop the run at a step, saved (lowssl.stopping)."""
    with contextlib.ExitStack() as held:
        ctx = distributed.init(args.device)
        if ctx.device.type == "cpu":
            torch.use_deterministic_algorithms(True, warn_only=True)
        overrides, subset_epochs = args.protocol_overrides()
        protocol = load_protocol(args.protocol, overrides)
        if protocol.batch_size % ctx.world_size:
            raise ConfigError(
                f"batch size {protocol.batch_size} does not split evenly over {ctx.world_size} processes"
            )
        net = build_network(args, protocol)  # a checkpoint without a DINO head fails before any data is read

        run_dir = Path(args.output_dir or home() / "runs" / "semisup" / args.run_name(net.subject))
        held.enter_context(run_folder_lock(run_dir, ctx.is_main))
        subset = labelled_subset(args, net.train_images, run_dir, ctx)
        if subset_epochs is not None:
            protocol = load_protocol(args.protocol, [*overrides, f"epochs_{subset.label}={subset_epochs}"])
        epochs = protocol.epochs(subset.label)

        loader, order = train_loader(args, protocol, net.train_images, subset, ctx)
        evaluation = evaluation_set(args, net.train_images, subset, protocol)
        model, trained, optimizer, memory_format = prepare_training(net.model, protocol, ctx, net.arch)

        state = RunState(model, optimizer, run_identity(args, protocol, epochs, subset, net), run_dir)
        resume_file = resume_path(args.resume, run_dir)
        if resume_file is not None:
            state.resume(resume_file)
        # a run resumed where it ended (its epochs done, or its max_steps reached) trains nothing more
        finished = state.start_epoch >= epochs or _reached(args.max_steps, state.global_step)
        say(_start_line(args, run_dir, resume_file, state, epochs, order, ctx), enabled=ctx.is_main)

        stop = held.enter_context(StopSignals(ctx.device))
        tick = time.perf_counter()
        stopped = False
        for epoch in range(state.start_epoch, state.start_epoch if finished else epochs):
            lr = protocol.epoch_lr(epoch, epochs)
            step, loss, stopped = train_one_epoch(
                trained, loader, order, state, epoch, epochs, lr, ctx, stop, args
            )
            complete = step == order.steps_per_epoch
            message = (
                f"epoch {epoch + 1}/{epochs}{'' if complete else f' (stopped at step {step})'}: "
                f"loss {loss.item():.4f}, lr {lr:.3g}"
            )
            if stopped or epoch + 1 == epochs or (complete and protocol.report == "best"):
                state.check_weights()  # never score weights the last update broke
                top1, top5 = evaluate(model, evaluation, ctx, protocol.eval_batch_size, args.workers)
                state.history.append({"epoch": epoch + 1, "complete": complete, "top1": top1, "top5": top5})
                message += f", top-1 {top1:.2f}, top-5 {top5:.2f}"
            say(message, enabled=ctx.is_main)
            state.save(epoch + 1 if complete else epoch, 0 if complete else step, ctx.is_main)
            if stopped:
                break
            if epoch + 1 < epochs and stop.requested():  # last.pth was saved at this epoch's end
                stop.stop(
                    f"fine-tuning after epoch {epoch + 1} (global step {state.global_step})", state.last
                )

        if not state.history:  # resumed a finished run
            raise ResumeError(f"{resume_file} holds no evaluation; use --resume never to run again")
        result = reported(state.history, protocol.report)
        result.update(
            run_dir=str(run_dir),
            seconds=time.perf_counter() - tick,
            epochs=epochs,
            subset=subset.label,
            labelled_images=len(subset.indices),
            eval_images=len(evaluation),
            head_source=net.head_source,
            arch=net.arch,
            stopped_by=_stopped_by(finished, stopped, args.max_steps),
            performance=memory_format.details(),  # the memory format it ran in and why (lowssl.perf)
        )
        if ctx.is_main:
            records = write_records(
                args, protocol, subset, net.subject, state.identity, result, state.history, ctx.world_size
            )
            result["records"] = str(records)
        return result


@dataclass
class Network:
    """The network to fine-tune and where it came from."""

    model: SemiSupervisedNet
    arch: str
    head_source: str  # "checkpoint", "new" or "none" (frozen-linear: no head)
    subject: Subject  # the checkpoint (or random init) the numbers are of
    opened: OpenedCheckpoint | None  # None for a random init
    train_images: Dataset  # the training split (its classes size the classifier)


def build_network(args: FinetuneArgs, protocol: SemisupProtocol) -> Network:
    """Backbone, head and a new classifier, initialised from ``protocol.seed``; a checkpoint without
    a DINO head fails here (HeadError), before any data is read."""
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
    return Network(model, arch, head_source, subject, opened, train_images)


def labelled_subset(args: FinetuneArgs, train_images, run_dir: Path, ctx: Context) -> LabelSubset:
    """The labelled images: a list file, or a generated 1pct / 10pct list written to ``run_dir`` (by
    rank 0, the others waiting for it)."""
    list_file, generate = subset_path(args.subset, train_images, args.dataset, run_dir, args.subset_seed)
    if generate and ctx.is_main:
        write_subset(list_file, train_images, args.dataset, SUBSETS[args.subset], args.subset_seed)
    distributed.barrier()
    subset = load_subset(list_file, train_images, args.fraction, args.expected_count)
    say(subset.report(), enabled=ctx.is_main)
    return subset


def train_loader(
    args: FinetuneArgs, protocol: SemisupProtocol, train_images, subset: LabelSubset, ctx: Context
) -> tuple[DataLoader, EpochSampler]:
    """This process's batches of the labelled images' seeded crops, and the epoch order they follow."""
    batch = protocol.batch_size // ctx.world_size
    labelled = IndexedImages(train_images, subset.indices)
    crops = SeededSamples(labelled, train_transform(protocol), protocol.seed)
    order = epoch_order(len(crops), batch, ctx.rank, ctx.world_size, protocol.seed)
    loader = DataLoader(
        crops, batch_size=batch, sampler=order, num_workers=args.workers, pin_memory=ctx.device.type == "cuda"
    )
    return loader, order


def prepare_training(
    model: SemiSupervisedNet, protocol: SemisupProtocol, ctx: Context, arch: str
) -> tuple[SemiSupervisedNet, nn.Module, torch.optim.Optimizer, MemoryFormatChoice]:
    """(the model on its device, what is trained: it or its DDP wrapper, the SGD optimiser, the memory
    format it trains and evaluates in: a CNN's faster one, timed on this process's batch, lowssl.perf)."""
    batch = protocol.batch_size // ctx.world_size
    shape = (batch, 3, protocol.image_size, protocol.image_size)

    def workload() -> Workload:
        step_for = training_step(
            model, [shape], ctx.device, lambda trial, images: trial(images[0]).logsumexp(1).mean()
        )
        return Workload(
            step_for,
            {
                "task": f"semisup-step:{protocol.network}",
                "backbone": arch,
                "precision": "none",
                "shape": shape,
            },
            batch,
        )

    choice = choose_memory_format(
        "auto", get_spec(arch).family, workload, ctx.device, f"semisup {arch}", ctx.is_main
    )
    model = to_memory_format(model, choice)
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
    return model, trained, optimizer, choice


def run_identity(
    args: FinetuneArgs, protocol: SemisupProtocol, epochs: int, subset: LabelSubset, net: Network
) -> dict:
    """What makes a run this run: a checkpoint of another is never resumed, and its config hash."""
    identity = {
        "protocol": to_dict(protocol),
        "epochs": epochs,
        "dataset": args.dataset,
        "subset_sha256": subset.sha256,
        "checkpoint_sha256": net.subject.checkpoint,
        "arch": net.arch,
        "head_source": net.head_source,
        "format": net.opened.format if net.opened else None,
        "branch": net.opened.branch if net.opened else None,
    }
    if args.held_out:  # only then, so that the identity (and config hash) of a run on val is unchanged
        identity["eval_set"] = args.eval_set()
    return identity


def _start_line(
    args: FinetuneArgs,
    run_dir: Path,
    resume_file: Path | None,
    state: RunState,
    epochs: int,
    order: EpochSampler,
    ctx: Context,
) -> str:
    """The run's first line: fresh or resumed, where, how long, on what, and where its records go."""
    records_file = Path(args.records_dir or default_runs_dir()) / f"semisup-{run_dir.name}.csv"
    started = (
        f"resumed from {resume_file} at epoch {state.start_epoch}, step {state.start_batch}"
        if resume_file is not None
        else "fresh run"
    )
    return (
        f"semisup finetune: {started} in {run_dir.absolute()}; {epochs} epochs of "
        f"{order.steps_per_epoch} steps"
        f"{f', stopping at max_steps={args.max_steps}' if args.max_steps is not None else ''}; "
        f"{ctx.device}{f' x {ctx.world_size} processes' if ctx.distributed else ''}, "
        f"{torch.get_num_threads()} threads; records -> {records_file.absolute()}"
    )


def train_one_epoch(
    trained: nn.Module,
    loader: DataLoader,
    order: EpochSampler,
    state: RunState,
    epoch: int,
    epochs: int,
    lr: float,
    ctx: Context,
    stop: StopSignals,
    args: FinetuneArgs,
) -> tuple[int, torch.Tensor, bool]:
    """One epoch at the learning rate ``lr``, from its first batch (a resumed run's: where it stopped)
    to its end, to ``max_steps`` (saved by the caller) or to a stop signal (saved and stopped here).
    Returns (the epoch's steps done, the last loss, whether ``max_steps`` stopped it)."""
    for group in state.optimizer.param_groups:
        group["lr"] = lr
    order.set_epoch(epoch, state.start_batch if epoch == state.start_epoch else 0)
    state.model.train()
    step, stopped = order.start_batch, False
    bar = progress(loader, f"epoch {epoch + 1}/{epochs}", enabled=ctx.is_main)
    for images, labels in bar:
        loss = F.cross_entropy(trained(images.to(ctx.device, non_blocking=True)), labels.to(ctx.device))
        state.check_loss(loss.item(), epoch, step)
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        state.optimizer.step()
        step, state.global_step = step + 1, state.global_step + 1
        bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.2e}")
        stopped = _reached(args.max_steps, state.global_step)
        if stopped:
            break
        if step < order.steps_per_epoch and stop.requested():  # an epoch's end stops after its save
            bar.close()
            state.save(epoch, step, ctx.is_main)
            stop.stop(
                f"fine-tuning after global step {state.global_step} (epoch {epoch + 1}, step {step})",
                state.last,
            )
    bar.close()
    return step, loss, stopped


def _reached(max_steps: int | None, global_step: int) -> bool:
    return max_steps is not None and global_step >= max_steps


def _stopped_by(finished: bool, stopped: bool, max_steps: int | None) -> str:
    """Why the run ended, for its closing line."""
    if finished:
        return "already complete"
    return f"stopped at max_steps={max_steps}" if stopped else "done"


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
