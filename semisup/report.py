"""What a fine-tuning reports: the evaluation its protocol reports, and its results records."""

from __future__ import annotations

from pathlib import Path

from lowssl.config import changed_values, config_hash, to_dict
from lowssl.io import git_commit
from lowssl.protocols import protocol_identity
from lowssl.records import append_records, build_records
from lowssl.released import record_details
from lowssl.semisup.arguments import SMOKE_LIMITS, SUBSET_EPOCHS, FinetuneArgs
from lowssl.semisup.protocols import SemisupProtocol, load_protocol
from lowssl.semisup.subsets import LabelSubset
from lowssl.subject import Subject


def reported(history: list[dict], report: str) -> dict:
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


def write_records(
    args: FinetuneArgs,
    protocol: SemisupProtocol,
    subset: LabelSubset,
    subject: Subject,
    identity: dict,
    result: dict,
    history: list[dict],
    world_size: int,
) -> Path:
    """Append the run's top-1 / top-5 records (lowssl.records) under the protocol its changes make."""
    overrides = args.recorded_overrides()
    # Values that differ from the protocol's own make another protocol (lowssl.protocols.protocol_identity);
    # the subset's epochs are named as the override names them, the other subset's change nothing here.
    base = load_protocol(args.protocol)
    changes = {
        key: value for key, value in changed_values(base, protocol).items() if not key.startswith("epochs_")
    }
    if protocol.epochs(subset.label) != base.epochs(subset.label):
        changes[SUBSET_EPOCHS] = protocol.epochs(subset.label)
    changes.update({key: overrides[key] for key in SMOKE_LIMITS if key in overrides})
    recorded_name, paper_protocol = protocol_identity(protocol.name, protocol.paper_protocol, changes)
    details = {
        "protocol": to_dict(protocol),  # lowssl.records.recorded_protocol: a changed preset never pools
        "protocol_source": protocol.source,
        "paper_protocol": paper_protocol,
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
        "world_size": world_size,
        "run_dir": result["run_dir"],
        "eval_set": args.eval_set(),
        "eval_images": result["eval_images"],
        **subset.summary(),
        **subject.record_details(),  # pretrain_budget: numbers of different budgets never pool
        **record_details(
            args.checkpoint, identity["checkpoint_sha256"]
        ),  # a released checkpoint: how verified
        **result["performance"],  # the memory format it ran in, and its measured speeds (lowssl.perf)
    }
    rows = build_records(
        {f"semi_{subset.label}_{k}": result[k] for k in ("top1", "top5")},
        recorded_name,
        run_id=f"semisup-{Path(result['run_dir']).name}",
        stage="semisup",
        dataset=args.dataset if not args.held_out else f"{args.dataset}/{args.eval_set()}",
        config_hash=config_hash(identity),
        git_commit=git_commit(),
        details=details,
        **subject.record_columns(),
    )
    return append_records(rows, args.records_dir)
