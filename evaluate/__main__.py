"""``python -m lowssl.evaluate {linear,knn,inspect,export}``: any checkpoint in, linear probe and k-NN out, under named protocols.

    python -m lowssl.evaluate linear --checkpoint runs/x/last.pth --protocol sslight_tiny
    python -m lowssl.evaluate linear --random-init --arch resnet18 --protocol fast_tiny
    python -m lowssl.evaluate knn --checkpoint runs/x/last.pth --protocol knn_tiny --k 20 --temperature 0.07
    python -m lowssl.evaluate inspect --checkpoint runs/x/last.pth
    python -m lowssl.evaluate export --checkpoint runs/x/last.pth --to timm --out r18.pth

Every result is appended to the results records (``results/runs/<run_id>.csv``, one file per evaluated
checkpoint + arch + branch). The same evaluation again (same checkpoint sha256, protocol, branch,
evaluation set, metric and config hash) on the same images and labels (the datasets' fingerprints,
lowssl.data) is read back from the records and printed instead of recomputed, unless ``--no-cache``;
a stored result of data changed since (a class folder swapped, an image edited) is recomputed.
``--random-init`` evaluates the same backbone at its seeded random initialisation: the baseline every
result is compared with; ``--raw-pixels`` the protocol's normalised centre crops themselves, flattened
(the floor any feature should beat). Run under torchrun for several processes.

This module holds the command line; the evaluation kinds (one subcommand each) are
lowssl.evaluate.kinds, the run lowssl.evaluate.run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lowssl.checkpoints import add_checkpoint_arguments
from lowssl.checkpoints.cli import CHECKPOINT_FLAG
from lowssl.cli import StageParser, add_quiet_argument, run_stage
from lowssl.config import add_overrides_argument
from lowssl.data import DATASETS, add_held_out_arguments, default_workers
from lowssl.evaluate.export_cmd import export_main
from lowssl.evaluate.features import BN_RECALIBRATION_IMAGES
from lowssl.evaluate.inspect_cmd import inspect_main
from lowssl.evaluate.kinds import KINDS, EvaluationKind
from lowssl.evaluate.protocols import available
from lowssl.evaluate.run import evaluate
from lowssl.export import TARGETS
from lowssl.paths import home
from lowssl.progress import set_quiet
from lowssl.records import default_runs_dir


def build_parser() -> argparse.ArgumentParser:
    parser = StageParser(
        prog="python -m lowssl.evaluate",
        description="Any checkpoint in, linear probe and k-NN out, "
        "under named protocols; records to results/runs/.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, kind in KINDS.items():
        _add_evaluation_arguments(commands.add_parser(name, help=kind.help, description=kind.help), kind)
    commands.add_parser(
        "inspect", help="what a checkpoint holds (python -m lowssl.evaluate inspect --help)", add_help=False
    )
    export = commands.add_parser(
        "export",
        help="the backbone alone, for torchvision / timm / safetensors",
        description="Write a checkpoint's backbone (any format evaluate reads, any branch) as a plain "
        "state dict: torchvision (strict=False: no classifier), timm (num_classes=0) or safetensors.",
    )
    add_checkpoint_arguments(export)
    export.formerly_positional(CHECKPOINT_FLAG)
    export.add_argument("--to", required=True, choices=TARGETS, help="the tool that will load it")
    export.add_argument("--out", type=Path, required=True, help="the file to write")
    return parser


def _add_evaluation_arguments(sub: argparse.ArgumentParser, kind: EvaluationKind) -> None:
    source = sub.add_mutually_exclusive_group(required=True)
    source.add_argument("--random-init", action="store_true", help="the backbone at random initialisation")
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
    sub.add_argument("--eval-subset", type=int, metavar="N", help="evaluate on N random images (smoke runs)")
    sub.add_argument("--no-cache", action="store_true", help="recompute: ignore stored results and features")
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
    sub.add_argument(
        "--protocol",
        required=kind.default_protocol is None,
        default=kind.default_protocol,
        help=f"one of: {', '.join(available(kind.protocol_kind))}",
    )
    kind.add_arguments(sub)
    add_overrides_argument(sub, "protocol overrides, e.g. epochs=2")
    sub.add_argument(
        "--print-config", action="store_true", help="print the resolved protocol (YAML) and exit"
    )
    add_quiet_argument(sub)


def _run_command(argv: list[str]) -> int:
    # Building the parser reads every protocol file (its --protocol help lists them): one may be refused.
    args = build_parser().parse_args(argv)
    set_quiet(getattr(args, "quiet", False))  # export prints its one line only
    return export_main(args) if args.command == "export" else evaluate(args)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["inspect"]:  # its own parser: every argument after it is inspect's
        return inspect_main(argv[1:])
    return run_stage(lambda: _run_command(argv))


if __name__ == "__main__":
    sys.exit(main())
