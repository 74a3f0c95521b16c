"""The evaluation kinds (``python -m lowssl.evaluate <kind>``), found by name in :data:`KINDS`.

Everything an evaluation does is the same for every kind (the subject, the images, the features, the
stored results, the records: lowssl.evaluate.run) except what an :class:`EvaluationKind` says: how
the result is computed from the features, which metrics it gives, the records' stage, which protocols
it reads, its own command-line arguments and how its protocol adapts to a backbone family and to the
training set. Adding a kind is one registration and its protocol YAML under ``evaluate/configs/``::

    KINDS.register(
        "knn5",
        EvaluationKind(
            help="5-NN on centre-crop features",
            record_stage="knn",  # one of lowssl.records.STAGES
            protocol_kind="knn",  # the ``kind:`` of its YAMLs: a class of lowssl.evaluate.protocols
            metrics=("knn_top1", "knn1_top1"),  # what ``compute`` returns, in the records' row order
            compute=compute_knn,  # (protocol, store, train, evaluation, ctx, workers) -> Outcome
            default_protocol="knn5",  # None: --protocol is required
        ),
    )

The optional fields default to "nothing of its own": ``add_arguments`` (the kind's arguments, after
``--protocol``), ``overrides`` (protocol overrides those arguments make), ``for_family`` (the protocol
as a backbone family runs it), ``plan`` (the protocol as it runs on this many training images, with
what to say and record about it: :class:`Plan`) and ``feature_blocks`` (the last ViT blocks whose CLS
tokens make the feature).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lowssl.config import ConfigError
from lowssl.distributed import Context
from lowssl.evaluate.features import FeatureStore, Split
from lowssl.evaluate.linear import augmented_batches, feature_batches, train_linear, train_transform
from lowssl.knn import knn_evaluate
from lowssl.registry import Registry


@dataclass
class Outcome:
    """What a kind's ``compute`` gives."""

    values: dict[str, float]  # metric -> value
    summary: dict  # goes into the records' details
    curves: dict  # per-epoch values: only in the output JSON
    head_state: dict | None = None


@dataclass
class Plan:
    """A protocol as it runs on one training set, and what the run says and records about that."""

    protocol: Any
    details: dict = field(default_factory=dict)  # into the records' details, before the outcome's summary
    notes: list[str] = field(default_factory=list)  # said before computing (lowssl.progress.say)
    warnings: list[str] = field(default_factory=list)  # printed before computing, under --quiet too


Compute = Callable[[Any, FeatureStore, Split, Split, Context, int], Outcome]


def _as_written(protocol, train_images: int, world_size: int) -> Plan:
    return Plan(protocol)


@dataclass(frozen=True)
class EvaluationKind:
    """What one evaluation kind does differently (the module docstring says how to register one)."""

    help: str
    record_stage: str
    protocol_kind: str
    metrics: tuple[str, ...]
    compute: Compute
    default_protocol: str | None = None
    add_arguments: Callable[[argparse.ArgumentParser], None] = lambda parser: None
    overrides: Callable[[argparse.Namespace], list[str]] = lambda args: []
    for_family: Callable[[Any, str], Any] = lambda protocol, family: protocol
    plan: Callable[[Any, int, int], Plan] = _as_written
    feature_blocks: Callable[[Any], int] = lambda protocol: 1


KINDS: Registry[EvaluationKind] = Registry("evaluation kind", "command")


# ---- linear probe ----------------------------------------------------------------------------------


def compute_linear(
    protocol, store: FeatureStore, train: Split, evaluation: Split, ctx, workers: int
) -> Outcome:
    eval_features = store.get(evaluation, protocol.crop)
    centre = None  # centre-crop features of the training images, where the protocol reads them
    if protocol.train_input == "features" or protocol.feature_normalisation == "l2_standardise":
        centre = store.get(train, protocol.crop)
    if protocol.train_input == "features":
        batches = feature_batches(centre, train.labels, protocol, ctx)
    else:
        images = train.with_transform(train_transform(protocol))
        batches = augmented_batches(images, store.model, protocol, ctx, workers)
    standardise_from = centre if protocol.feature_normalisation == "l2_standardise" else None
    result = train_linear(
        protocol,
        batches,
        store.model.feature_dim,
        train.num_classes,
        eval_features,
        evaluation.labels,
        ctx,
        standardise_from,
    )
    summary = {
        "best_epoch_selection": protocol.report == "best",
        "reported_epoch": result.reported_epoch,
        "last_epoch_top1": result.last_top1,
        "peak_lr": protocol.peak_lr(),
        "optimizer_steps": result.steps,
    }
    curves = {"top1_per_epoch": result.top1_per_epoch, "top5_per_epoch": result.top5_per_epoch}
    return Outcome(
        {"linear_top1": result.top1, "linear_top5": result.top5}, summary, curves, result.head_state
    )


def plan_linear(protocol, train_images: int, world_size: int) -> Plan:
    """A step budget (``budget_images``) keeps its optimiser steps on a smaller training set; the
    records keep the epochs the protocol names and whether its budget was measured converged here."""
    named_epochs = protocol.epochs
    protocol = protocol.for_training_set(train_images, world_size)
    converged = protocol.measured_converged(train_images)
    plan = Plan(protocol, {"named_epochs": named_epochs, "converged_measured": converged})
    if protocol.epochs != named_epochs:
        plan.notes.append(
            f"protocol {protocol.name}: {protocol.epochs} epochs on {train_images} training images, the optimiser "
            f"steps of its {named_epochs} epochs on {protocol.budget_images} (budget_images)"
        )
    if converged is False:
        plan.warnings.append(
            f"warning: protocol {protocol.name} was measured converged on {protocol.converged_from_images} "
            f"training images or more, not on {train_images}: its number may still move with its budget "
            "(pass a larger --train-subset)"
        )
    return plan


KINDS.register(
    "linear",
    EvaluationKind(
        help="linear probe under a protocol",
        record_stage="linear",
        protocol_kind="linear",
        metrics=("linear_top1", "linear_top5"),
        compute=compute_linear,
        # a ViT's batch size, LR and optimizer differ (the protocol's vit section)
        for_family=lambda protocol, family: protocol.for_family(family),
        plan=plan_linear,
        feature_blocks=lambda protocol: protocol.vit.last_blocks,
    ),
)


# ---- k-NN ------------------------------------------------------------------------------------------


def compute_knn(protocol, store: FeatureStore, train: Split, evaluation: Split, ctx, workers: int) -> Outcome:
    bank = store.get(train, protocol.crop)
    queries = store.get(evaluation, protocol.crop)
    result = knn_evaluate(
        bank,
        train.labels,
        queries,
        evaluation.labels,
        train.num_classes,
        protocol.k,
        protocol.temperature,
        ctx.device,
    )
    return Outcome({"knn_top1": result.top1, "knn1_top1": result.nn1_top1}, {}, {})


def plan_knn(protocol, train_images: int, world_size: int) -> Plan:
    if protocol.k > train_images:  # lowssl.knn refuses it too, after the features
        raise ConfigError(
            f"k={protocol.k} neighbours, but the bank holds {train_images} training images: "
            f"pass --k {train_images} or less (or more training images)"
        )
    return Plan(protocol)


def add_knn_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--k", type=int, help="neighbours (protocol default 20)")
    parser.add_argument("--temperature", type=float, help="vote temperature (protocol default 0.07)")


def knn_overrides(args: argparse.Namespace) -> list[str]:
    """--k and --temperature, as the protocol overrides they are (after the command line's own)."""
    overrides = [f"k={args.k}"] if args.k is not None else []
    return overrides + ([f"temperature={args.temperature}"] if args.temperature is not None else [])


KINDS.register(
    "knn",
    EvaluationKind(
        help="weighted k-NN and 1-NN",
        record_stage="knn",
        protocol_kind="knn",
        metrics=("knn_top1", "knn1_top1"),
        compute=compute_knn,
        default_protocol="knn",
        add_arguments=add_knn_arguments,
        overrides=knn_overrides,
        plan=plan_knn,
    ),
)
