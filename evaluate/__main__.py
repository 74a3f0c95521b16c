"""``python -m evaluate {linear,knn,inspect}``: any checkpoint in, linear probe and k-NN out, under named protocols.

    python -m evaluate linear --checkpoint runs/x/last.pth --protocol sslight_tiny
    python -m evaluate linear --random-init --arch resnet18 --protocol fast_tiny
    python -m evaluate knn --checkpoint runs/x/last.pth --protocol knn_tiny --k 20 --temperature 0.07
    python -m evaluate inspect runs/x/last.pth

Every result is appended to the results records (``results/runs/<run_id>.csv``, one file per evaluated
checkpoint + arch + branch). The same evaluation again (same checkpoint sha256, protocol, branch,
evaluation set, metric and config hash) on the same images and labels (the datasets' fingerprints,
lowssl.data) is read back from the records and printed instead of recomputed, unless ``--no-cache``;
a stored result of data changed since (a class folder swapped, an image edited) is recomputed.
``--random-init`` evaluates the same backbone at its seeded random initialisation: the baseline every
result is compared with; ``--raw-pixels`` the protocol's normalised centre crops themselves, flattened
(the floor any feature should beat). Run under torchrun for several processes.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn

from evaluate import protocols
from evaluate.features import (
    BN_RECALIBRATION_IMAGES,
    FeatureStore,
    NonFiniteFeaturesError,
    Split,
    recalibrate_bn,
)
from evaluate.linear import DivergedError, augmented_batches, feature_batches, train_linear, train_transform
from lowssl import distributed
from lowssl.backbones import build_backbone, get_spec
from lowssl.checkpoints import CheckpointLayoutError, add_checkpoint_arguments, open_from_arguments
from lowssl.config import ConfigError, add_overrides_argument, config_hash, to_dict
from lowssl.data import (
    DATASETS,
    DatasetError,
    add_held_out_arguments,
    build_dataset,
    default_workers,
    held_out_split,
)
from lowssl.export import TARGETS, export_backbone
from lowssl.features import FrozenFeatures
from lowssl.io import CheckpointError, DiskFullError, atomic_torch_save, atomic_write_text, git_commit
from lowssl.knn import knn_evaluate
from lowssl.paths import home
from lowssl.progress import add_quiet_argument, say, set_quiet
from lowssl.records import Record, RecordsWriteError, append_records, default_runs_dir, read_records
from lowssl.released import record_details
from lowssl.subject import Subject as Provenance

SUBSET_SEED = 0  # --train-subset / --eval-subset: a fixed random choice, the same on every run
METRICS = {"linear": ("linear_top1", "linear_top5"), "knn": ("knn_top1", "knn1_top1")}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit code 2, as every other bad input
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m evaluate",
        description="Any checkpoint in, linear probe and k-NN out, "
        "under named protocols; records to results/runs/.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("linear", "linear probe under a protocol"), ("knn", "weighted k-NN and 1-NN")):
        sub = commands.add_parser(name, help=help_text, description=help_text)
        source = sub.add_mutually_exclusive_group(required=True)
        source.add_argument(
            "--random-init", action="store_true", help="the backbone at random initialisation"
        )
        source.add_argument(
            "--raw-pixels", action="store_true", help="no backbone: the flattened normalised crops"
        )
        add_checkpoint_arguments(sub, checkpoint_in=source)
        sub.add_argument("--seed", type=int, default=0, help="--random-init: the initialisation seed")
        sub.add_argument(
            "--recalibrate-bn",
            action="store_true",
            help=f"--random-init: re-estimate BN statistics on {BN_RECALIBRATION_IMAGES} training images first "
            "(weights unchanged): the floor without the init's mean-0 / variance-1 statistics",
        )
        sub.add_argument("--dataset", choices=DATASETS, default="fashion-mnist")
        sub.add_argument("--data-root", help="imagefolder: the folder holding train/ and val/")
        add_held_out_arguments(sub, "the paper's ablations, Sec. 3.2; or to choose a hyper-parameter")
        sub.add_argument("--train-subset", type=int, metavar="N", help="train on N random training images")
        sub.add_argument(
            "--eval-subset", type=int, metavar="N", help="evaluate on N random images (smoke runs)"
        )
        sub.add_argument(
            "--no-cache", action="store_true", help="recompute: ignore stored results and features"
        )
        sub.add_argument("--output-dir", type=Path, default=home() / "runs" / "evaluate")
        sub.add_argument("--records-dir", type=Path, default=default_runs_dir())
        sub.add_argument("--cache-dir", type=Path, help="feature cache (default: OUTPUT_DIR/feature-cache)")
        sub.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
        sub.add_argument(
            "--workers",
            type=int,
            default=default_workers(),
            help="data-loading processes per process (default: 4, at most the CPUs available)",
        )
        if name == "linear":
            sub.add_argument(
                "--protocol", required=True, help=f"one of: {', '.join(protocols.available('linear'))}"
            )
        else:
            sub.add_argument(
                "--protocol", default="knn", help=f"one of: {', '.join(protocols.available('knn'))}"
            )
            sub.add_argument("--k", type=int, help="neighbours (protocol default 20)")
            sub.add_argument("--temperature", type=float, help="vote temperature (protocol default 0.07)")
        add_overrides_argument(sub, "protocol overrides, e.g. epochs=2")
        sub.add_argument(
            "--print-config", action="store_true", help="print the resolved protocol (YAML) and exit"
        )
        add_quiet_argument(sub)
    commands.add_parser(
        "inspect", help="what a checkpoint holds (python -m evaluate inspect --help)", add_help=False
    )
    export = commands.add_parser(
        "export",
        help="the backbone alone, for torchvision / timm / safetensors",
        description="Write a checkpoint's backbone (any format evaluate reads, any branch) as a plain "
        "state dict: torchvision (strict=False: no classifier), timm (num_classes=0) or safetensors.",
    )
    add_checkpoint_arguments(export)
    export.add_argument("--to", required=True, choices=TARGETS, help="the tool that will load it")
    export.add_argument("--out", type=Path, required=True, help="the file to write")
    return parser


def export_main(args) -> int:
    opened = open_from_arguments(args)
    written = export_backbone(opened, args.to, args.out)
    print(
        f"{opened.arch} backbone ({opened.format}, branch {opened.branch}, {opened.loaded} tensors) -> {written}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["inspect"]:
        from evaluate.inspect_cmd import inspect_main

        return inspect_main(argv[1:])
    try:
        # Building the parser reads every protocol file (its --protocol help lists them): one may be refused.
        args = build_parser().parse_args(argv)
        set_quiet(getattr(args, "quiet", False))  # export prints its one line only
        return export_main(args) if args.command == "export" else evaluate(args)
    except (
        ConfigError,
        CheckpointLayoutError,
        CheckpointError,
        DatasetError,
        NonFiniteFeaturesError,
    ) as error:
        print("error: " + " ".join(str(error).split()), file=sys.stderr)
        return 2
    except (DivergedError, DiskFullError) as error:  # not bad input: the run itself failed
        print(f"error: {error}", file=sys.stderr)
        return 1


# ---- what is evaluated ------------------------------------------------------------------------------


@dataclass(kw_only=True)
class Subject(Provenance):
    """The backbone under evaluation (built) and where it came from (lowssl.subject)."""

    model: nn.Module
    notes: list[str]
    family: str = "cnn"
    feature_dim: int = 0

    @classmethod
    def built(cls, provenance: Provenance, model: nn.Module, notes: list[str], **more) -> Subject:
        """``provenance`` with its backbone built (``more``: family, feature_dim)."""
        return cls(**asdict(provenance), model=model, notes=notes, **more)

    @property
    def identity(self) -> dict:
        return {"checkpoint": self.checkpoint, "arch": self.arch, "branch": self.branch}

    @property
    def short_id(self) -> str:
        return self.checkpoint if self.format in ("random-init", "raw-pixels") else self.checkpoint[:12]

    @property
    def run_id(self) -> str:
        return f"eval-{self.short_id}-{self.arch}-{self.branch}"


def load_subject(args, image_size: int) -> Subject:
    if args.raw_pixels:
        if args.arch is not None:
            raise ConfigError("--raw-pixels evaluates the images themselves: drop --arch")
        return Subject.built(
            Provenance.raw_pixels(),
            nn.Flatten(),
            [f"normalised {image_size}-px centre crops, flattened"],
            feature_dim=3 * image_size**2,
        )
    subject = _load_backbone(args)
    spec = get_spec(subject.arch)
    subject.family, subject.feature_dim = spec.family, spec.feature_dim
    return subject


def _load_backbone(args) -> Subject:
    if args.recalibrate_bn and not args.random_init:
        raise ConfigError("--recalibrate-bn is for --random-init (a trained backbone has its own statistics)")
    if args.random_init:
        if args.arch is None:
            raise ConfigError("--random-init needs --arch (the backbone to initialise)")
        torch.manual_seed(args.seed)
        # The floor with re-estimated BN statistics is another subject: its own id, method and cache.
        bn = f"-bn{BN_RECALIBRATION_IMAGES}" if args.recalibrate_bn else ""
        provenance = Provenance.random_init(
            args.arch, args.seed, f"random-init-seed{args.seed}{bn}", f"random-init{'-bn' if bn else ''}"
        )
        return Subject.built(
            provenance, build_backbone(args.arch), [f"random initialisation, torch seed {args.seed}"]
        )
    opened = open_from_arguments(args)
    return Subject.built(
        Provenance.of_checkpoint(opened),
        opened.build_backbone(),
        [*opened.notes, f"{opened.loaded} backbone keys loaded, {len(opened.unexpected)} unexpected"],
    )


# ---- which images -----------------------------------------------------------------------------------


def _random_subset(indices: np.ndarray, size: int | None, what: str) -> np.ndarray:
    if size is None:
        return indices
    if not 0 < size <= len(indices):
        raise ConfigError(
            f"--{what}-subset {size}: must be between 1 and {len(indices)} (the images available)"
        )
    return np.sort(np.random.default_rng(SUBSET_SEED).choice(indices, size=size, replace=False))


def build_splits(args, image_size: int) -> tuple[Split, Split, str]:
    """(training images, evaluation images, the dataset column of the records)."""
    root = str(Path(args.data_root).resolve()) if args.data_root else None
    train_images = build_dataset(args.dataset, "train", root, image_size)
    train_index = np.arange(len(train_images))
    label = args.dataset if args.dataset != "imagefolder" else f"imagefolder:{Path(root).name}"
    if args.held_out:
        train_index, eval_index = held_out_split(train_images.targets, args.held_out_per_class)
        evaluation = Split(args.dataset, root, "train", train_images, eval_index)
        label += f"/held-out-{args.held_out_per_class}pc"
    else:
        eval_images = build_dataset(args.dataset, "val", root, image_size)
        evaluation = Split(args.dataset, root, "val", eval_images, np.arange(len(eval_images)))
    train = Split(
        args.dataset, root, "train", train_images, _random_subset(train_index, args.train_subset, "train")
    )
    evaluation.indices = _random_subset(evaluation.indices, args.eval_subset, "eval")
    label += f"/train{args.train_subset}" if args.train_subset else ""
    label += f"/eval{args.eval_subset}" if args.eval_subset else ""
    return train, evaluation, label


# ---- records -------------------------------------------------------------------------------------------


def stored_result(
    records_dir: Path,
    stage: str,
    subject: Subject,
    protocol: str,
    dataset: str,
    chash: str,
    fingerprint: dict,
):
    """The stored rows of this exact evaluation on the same images and labels, or None, and a line
    saying why not where rows were found but computed from other data (``fingerprint``: the datasets'
    fingerprints, lowssl.data; a class folder swapped or an image edited since changes it)."""
    frame = read_records(records_dir)
    # The backbone too: random-init subjects of different architectures share one "checkpoint" id.
    rows = frame[
        (frame.stage == stage)
        & (frame.checkpoint_sha256 == subject.checkpoint)
        & (frame.backbone == subject.arch)
        & (frame.protocol == protocol)
        & (frame.branch == subject.branch)
        & (frame.dataset == dataset)
        & (frame.config_hash == chash)
    ]
    if not set(METRICS[stage]) <= set(rows.metric):
        return None, ""
    recorded = [_recorded_fingerprint(details) for details in rows.details]
    if any(value != fingerprint for value in recorded):
        return None, (
            f"the stored result in {records_dir / subject.run_id}.csv was computed on other images or "
            f"labels (dataset fingerprint {_fingerprint_text(recorded[0])}, now {_fingerprint_text(fingerprint)}): "
            "recomputing"
        )
    return rows, ""


def _recorded_fingerprint(details: str) -> dict | None:
    """A record's ``dataset_fingerprint``; None where it has none or its details are not JSON."""
    try:
        fingerprint = json.loads(details or "{}").get("dataset_fingerprint")
    except (ValueError, AttributeError):
        return None
    return fingerprint if isinstance(fingerprint, dict) else None


def _fingerprint_text(fingerprint: dict | None) -> str:
    return (
        ", ".join(f"{split} {value}" for split, value in sorted(fingerprint.items()))
        if fingerprint
        else "not recorded"
    )


# ---- the evaluation ------------------------------------------------------------------------------------


@dataclass
class Outcome:
    values: dict[str, float]  # metric -> value
    summary: dict  # goes into the records' details
    curves: dict  # per-epoch values: only in the output JSON
    head_state: dict | None = None


def evaluate(args) -> int:
    stage = args.command
    overrides = list(args.overrides)
    if stage == "knn":
        overrides += [f"k={args.k}"] if args.k is not None else []
        overrides += [f"temperature={args.temperature}"] if args.temperature is not None else []
    protocol = protocols.load_protocol(args.protocol, stage, overrides)
    if args.print_config:
        # With --arch, the protocol as that backbone's family runs it (a ViT's batch and LR differ).
        if stage == "linear" and args.arch is not None:
            protocol = protocol.for_family(get_spec(args.arch).family)
        print(yaml.safe_dump(to_dict(protocol), sort_keys=False), end="")
        return 0
    ctx = distributed.init(args.device)
    subject = load_subject(args, protocol.crop.image_size)
    if stage == "linear":
        protocol = protocol.for_family(subject.family)
    train, evaluation, dataset = build_splits(args, protocol.crop.image_size)
    named_epochs = protocol.epochs if stage == "linear" else None
    if stage == "linear":  # a step budget (budget_images) keeps its steps on a smaller training set
        protocol = protocol.for_training_set(len(train), ctx.world_size)
    if stage == "knn" and protocol.k > len(train):  # lowssl.knn refuses it too, after the features
        raise ConfigError(
            f"k={protocol.k} neighbours, but the bank holds {len(train)} training images: "
            f"pass --k {len(train)} or less (or more training images)"
        )
    chash = config_hash({"protocol": to_dict(protocol), "dataset": dataset, "root": train.root})

    fingerprint = {"train": train.fingerprint, "eval": evaluation.fingerprint}  # once per run
    stored, stale = (
        (None, "")
        if args.no_cache
        else stored_result(args.records_dir, stage, subject, protocol.name, dataset, chash, fingerprint)
    )
    if ctx.is_main:
        say(
            f"evaluate {stage} {protocol.name}: {subject.arch}/{subject.branch} {subject.short_id} on {dataset} "
            f"({len(train)} training, {len(evaluation)} evaluation images); {ctx.device}"
            f"{f' x {ctx.world_size} processes' if ctx.distributed else ''}, {torch.get_num_threads()} threads; "
            f"records -> {args.records_dir / subject.run_id}.csv"
        )
    if stale and ctx.is_main:  # a warning: printed under --quiet too
        print(stale)
    if stored is not None:
        values = {row.metric: row.value for row in stored.itertuples()}
        _report(
            ctx,
            stage,
            protocol,
            dataset,
            subject,
            values,
            f"stored {stored.created_at.iloc[0]} in {args.records_dir / subject.run_id}.csv; --no-cache recomputes",
        )
        distributed.shutdown()
        return 0

    if protocol.note and ctx.is_main:
        say(f"protocol {protocol.name}: {protocol.note}")
    if named_epochs is not None and protocol.epochs != named_epochs and ctx.is_main:
        say(
            f"protocol {protocol.name}: {protocol.epochs} epochs on {len(train)} training images, the optimiser "
            f"steps of its {named_epochs} epochs on {protocol.budget_images} (budget_images)"
        )
    converged = protocol.measured_converged(len(train)) if stage == "linear" else None
    if converged is False and ctx.is_main:  # a warning: printed under --quiet too
        print(
            f"warning: protocol {protocol.name} was measured converged on {protocol.converged_from_images} "
            f"training images or more, not on {len(train)}: its number may still move with its budget "
            "(pass a larger --train-subset)"
        )
    if args.recalibrate_bn:
        used = recalibrate_bn(subject.model, train, protocol.crop, ctx.device)
        subject.notes.append(f"BN statistics re-estimated on {used} training images (fvcore precise BN)")
    frozen = FrozenFeatures(
        subject.model,
        subject.family,
        subject.feature_dim,
        protocol.vit.last_blocks if stage == "linear" else 1,
    ).to(ctx.device)
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
    run = run_knn if stage == "knn" else run_linear
    outcome = run(protocol, store, train, evaluation, ctx, args.workers)
    if ctx.is_main:
        details = {
            "protocol": to_dict(protocol),
            "paper_protocol": protocol.paper_protocol,
            "note": protocol.note,
            **subject.record_details(),  # pretrain_budget: numbers of different budgets never pool
            "checkpoint_format": subject.format,
            "adapter_notes": subject.notes,
            "feature": frozen.kind,
            "train_images": len(train),
            "eval_images": len(evaluation),
            "world_size": ctx.world_size,
            "eval_set": "held-out of train" if args.held_out else "val",
            "dataset_fingerprint": fingerprint,
            # the epochs the protocol names; details.protocol.epochs are those run (budget_images)
            **({"named_epochs": named_epochs} if named_epochs is not None else {}),
            **({"converged_measured": converged} if stage == "linear" else {}),
            **outcome.summary,
            **record_details(args.checkpoint, subject.checkpoint),  # a released checkpoint: how verified
        }
        common = dict(
            run_id=subject.run_id,
            stage=stage,
            dataset=dataset,
            protocol=protocol.name,
            config_hash=chash,
            git_commit=git_commit(),
            details=details,
            **subject.record_columns(),
        )
        rows = [Record(**common, metric=m, value=v) for m, v in outcome.values.items()]
        stem = f"{stage}-{protocol.name}-{dataset}"
        where, errors = _keep_result(
            args.output_dir / subject.run_id, stem, outcome, details, chash, rows, args.records_dir
        )
        _report(ctx, stage, protocol, dataset, subject, outcome.values, where)
        for error in errors:  # after the result: a full disk loses a file, never the printed numbers
            print(f"error: {error}", file=sys.stderr)
        if errors:
            distributed.shutdown()
            return 1
    distributed.shutdown()
    return 0


def _keep_result(
    folder: Path, stem: str, outcome: Outcome, details: dict, chash: str, rows: list, records_dir: Path
) -> tuple[str, list[OSError]]:
    """Write the result JSON (and head) into the run folder, then append the records; returns where the
    result is kept, for the printed line, and the errors of the writes that failed (one line each). The
    folder comes first, so a full or read-only records disk still leaves the result beside the run."""
    errors = []
    try:
        result_file = _write_outputs(folder, stem, outcome, details, chash)
    except OSError as error:  # DiskFullError names the disk, its free space and the file
        result_file, errors = None, [error]
    try:
        records_file = append_records(rows, records_dir)
    except RecordsWriteError as error:
        records_file = None
        errors.append(error)
    if not errors:
        return f"records: {records_file}", []
    kept = [
        f"records: {records_file}" if records_file else "records NOT written",
        f"result: {result_file}" if result_file else "result file NOT written",
    ]
    if not (records_file or result_file):
        kept.append("this printed line is all that is kept")
    return "; ".join(kept), errors


def run_knn(protocol, store: FeatureStore, train: Split, evaluation: Split, ctx, workers: int) -> Outcome:
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


def run_linear(protocol, store: FeatureStore, train: Split, evaluation: Split, ctx, workers: int) -> Outcome:
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


def _write_outputs(folder: Path, stem: str, outcome: Outcome, details: dict, chash: str) -> Path:
    """The result as JSON (with per-epoch curves) and the trained classifier, next to each other;
    returns the JSON's path."""
    stem = stem.replace("/", "_").replace(":", "_")
    folder.mkdir(parents=True, exist_ok=True)
    payload = {"metrics": outcome.values, "config_hash": chash, "details": details, "curves": outcome.curves}
    result_file = atomic_write_text(folder / f"{stem}.json", json.dumps(payload, indent=2))
    if outcome.head_state is not None:
        atomic_torch_save(outcome.head_state, folder / f"{stem}-head.pth")
    return result_file


def _report(ctx, stage: str, protocol, dataset: str, subject: Subject, values: dict, where: str) -> None:
    if ctx.is_main:
        marker = "" if protocol.paper_protocol else " [not a paper protocol]"
        metrics = ", ".join(f"{metric} {value:.2f}" for metric, value in values.items())
        print(
            f"{stage} {protocol.name}{marker} on {dataset}, {subject.arch}/{subject.branch} "
            f"{subject.short_id}: {metrics} ({where})"
        )


if __name__ == "__main__":
    sys.exit(main())
