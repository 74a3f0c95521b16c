"""One evaluation, top to bottom: the protocol, what is evaluated, the images, a stored result read back
or the result computed from the frozen backbone's features (by the evaluation kind,
lowssl.evaluate.kinds), then kept in the run folder and the records and printed as one line."""

from __future__ import annotations

import sys

import torch
import yaml

from lowssl import distributed
from lowssl.backbones import get_spec
from lowssl.config import config_hash, to_dict
from lowssl.evaluate.features import FeatureStore, Split, recalibrate_bn
from lowssl.evaluate.kinds import KINDS, EvaluationKind, Outcome, Plan
from lowssl.evaluate.protocols import load_protocol
from lowssl.evaluate.splits import build_splits
from lowssl.evaluate.stored import keep_result, stored_result
from lowssl.evaluate.subject import Subject, load_subject
from lowssl.features import FrozenFeatures
from lowssl.io import git_commit
from lowssl.progress import say
from lowssl.records import build_records
from lowssl.released import record_details


def evaluate(args) -> int:
    """Evaluate under ``args.command``'s kind; 0, or 1 where a result could not be written."""
    name, kind = args.command, KINDS.get(args.command)
    protocol = load_protocol(args.protocol, kind.protocol_kind, [*args.overrides, *kind.overrides(args)])
    if args.print_config:
        return _print_config(kind, protocol, args.arch)
    ctx = distributed.init(args.device)
    subject = load_subject(args, protocol.crop.image_size)
    protocol = kind.for_family(protocol, subject.family)
    train, evaluation, dataset = build_splits(args, protocol.crop.image_size)
    plan = kind.plan(protocol, len(train), ctx.world_size)
    protocol = plan.protocol
    chash = config_hash({"protocol": to_dict(protocol), "dataset": dataset, "root": train.root})

    fingerprint = {"train": train.fingerprint, "eval": evaluation.fingerprint}  # once per run
    stored, stale = (
        (None, "")
        if args.no_cache
        else stored_result(args.records_dir, kind, subject, protocol.name, dataset, chash, fingerprint)
    )
    records_file = args.records_dir / f"{subject.run_id}.csv"
    if ctx.is_main:
        say(
            f"evaluate {name} {protocol.name}: {subject.arch}/{subject.branch} {subject.short_id} on {dataset} "
            f"({len(train)} training, {len(evaluation)} evaluation images); {ctx.device}"
            f"{f' x {ctx.world_size} processes' if ctx.distributed else ''}, {torch.get_num_threads()} threads; "
            f"records -> {records_file}"
        )
    if stale and ctx.is_main:  # a warning: printed under --quiet too
        print(stale)
    if stored is not None:
        values = {row.metric: row.value for row in stored.itertuples()}
        where = f"stored {stored.created_at.iloc[0]} in {records_file}; --no-cache recomputes"
        _report(ctx, name, protocol, dataset, subject, values, where)
        distributed.shutdown()
        return 0

    if ctx.is_main:
        _announce(plan)
    if args.recalibrate_bn:
        used = recalibrate_bn(subject.model, train, protocol.crop, ctx.device)
        subject.notes.append(f"BN statistics re-estimated on {used} training images (fvcore precise BN)")
    frozen = _frozen_features(subject, kind.feature_blocks(protocol), ctx.device)
    store = FeatureStore(
        frozen,
        subject.identity,
        ctx,
        protocol.eval_batch_size,
        args.workers,
        args.cache_dir or args.output_dir / "feature-cache",
        refresh=args.no_cache,
        source=str(args.checkpoint or subject.checkpoint),
    )
    outcome = kind.compute(protocol, store, train, evaluation, ctx, args.workers)

    errors = []
    if ctx.is_main:
        details = _details(args, ctx, plan, subject, frozen, (train, evaluation), fingerprint, outcome)
        rows = build_records(
            outcome.values,
            protocol.name,
            run_id=subject.run_id,
            stage=kind.record_stage,
            dataset=dataset,
            config_hash=chash,
            git_commit=git_commit(),
            details=details,
            **subject.record_columns(),
        )
        stem = f"{name}-{protocol.name}-{dataset}"
        where, errors = keep_result(
            args.output_dir / subject.run_id, stem, outcome, details, chash, rows, args.records_dir
        )
        _report(ctx, name, protocol, dataset, subject, outcome.values, where)
        for error in errors:  # after the result: a full disk loses a file, never the printed numbers
            print(f"error: {error}", file=sys.stderr)
    distributed.shutdown()
    return 1 if errors else 0


def _frozen_features(subject: Subject, blocks: int, device: torch.device) -> FrozenFeatures:
    """The subject's feature function on ``device``; a CNN's pass runs in the faster memory format,
    timed at its first batch (lowssl.perf), a ViT's contiguous; raw pixels have no network to time."""
    layout = False if subject.arch == "pixels" else "auto"
    features = FrozenFeatures(
        subject.model, subject.family, subject.feature_dim, blocks, channels_last=layout, arch=subject.arch
    )
    return features.to(device)


def _print_config(kind: EvaluationKind, protocol, arch: str | None) -> int:
    """Print the resolved protocol as YAML. With --arch, as that backbone's family runs it (a ViT's
    linear probe takes another batch size and LR)."""
    if arch is not None:
        protocol = kind.for_family(protocol, get_spec(arch).family)
    print(yaml.safe_dump(to_dict(protocol), sort_keys=False), end="")
    return 0


def _announce(plan: Plan) -> None:
    """What the main process says of the protocol before computing: its note, then the plan's."""
    protocol = plan.protocol
    if protocol.note:
        say(f"protocol {protocol.name}: {protocol.note}")
    for note in plan.notes:
        say(note)
    for warning in plan.warnings:  # printed under --quiet too
        print(warning)


def _details(
    args,
    ctx,
    plan: Plan,
    subject: Subject,
    frozen: FrozenFeatures,
    splits: tuple[Split, Split],
    fingerprint: dict,
    outcome: Outcome,
) -> dict:
    """The records' ``details``: the choices that make the numbers comparable or not."""
    protocol = plan.protocol
    train, evaluation = splits
    return {
        "protocol": to_dict(protocol),
        "paper_protocol": protocol.paper_protocol,
        "note": protocol.note,
        **subject.record_details(),  # pretrain_budget: numbers of different budgets never pool
        "checkpoint_format": subject.format,
        "adapter_notes": subject.notes,
        "feature": frozen.kind,
        **frozen.performance(),  # the feature pass's memory format and its measured speeds (lowssl.perf)
        "train_images": len(train),
        "eval_images": len(evaluation),
        "world_size": ctx.world_size,
        "eval_set": "held-out of train" if args.held_out else "val",
        "dataset_fingerprint": fingerprint,
        # linear: the epochs the protocol names (details.protocol.epochs are those run: budget_images)
        **plan.details,
        **outcome.summary,
        **record_details(args.checkpoint, subject.checkpoint),  # a released checkpoint: how verified
    }


def _report(ctx, name: str, protocol, dataset: str, subject: Subject, values: dict, where: str) -> None:
    if ctx.is_main:
        marker = "" if protocol.paper_protocol else " [not a paper protocol]"
        metrics = ", ".join(f"{metric} {value:.2f}" for metric, value in values.items())
        print(
            f"{name} {protocol.name}{marker} on {dataset}, {subject.arch}/{subject.branch} "
            f"{subject.short_id}: {metrics} ({where})"
        )
