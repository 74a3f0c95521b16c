"""``python -m lowssl.pretrain --config pretrain/configs/<name>.yaml [key=value ...]`` and the
``lowssl-pretrain`` console script: the arguments, then the run (:func:`lowssl.pretrain.train.train`),
its resolved config (``--print-config``) or its dry run (``--dry-run``, :mod:`lowssl.pretrain.dry_run`).
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

from lowssl.cli import StageParser, add_quiet_argument, run_stage
from lowssl.config import load
from lowssl.pretrain.config import PretrainConfig
from lowssl.pretrain.dry_run import describe
from lowssl.pretrain.train import resolved_yaml, train
from lowssl.progress import set_quiet


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


def build_parser() -> StageParser:
    parser = StageParser(
        prog="python -m lowssl.pretrain",
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
    return parser


def main(argv=None) -> int:
    """Exit 0; 2 for bad input (a config, dataset, checkpoint to resume or busy run folder); 1 for a
    run that failed (a NaN or infinity, a full disk)."""
    args = build_parser().parse_intermixed_args(argv)  # overrides may come before or after the flags
    return run_stage(lambda: _run(args))


def _run(args: argparse.Namespace) -> None:
    cfg = load(PretrainConfig, args.config, args.overrides)
    set_quiet(args.quiet)
    if args.print_config:
        print(resolved_yaml(cfg))
    elif args.dry_run:
        print(describe(cfg, args.processes, args.timed_steps))
    else:
        train(cfg)


if __name__ == "__main__":
    sys.exit(main())
