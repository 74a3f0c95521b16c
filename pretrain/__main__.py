"""``python -m lowssl.pretrain --config <preset or YAML file> [key=value ...]`` and the
``lowssl-pretrain`` console script: the arguments, then the run (:func:`lowssl.pretrain.train.train`),
its resolved config (``--print-config``) or its dry run (``--dry-run``, :mod:`lowssl.pretrain.dry_run`).
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

from lowssl.cli import StageParser, add_quiet_argument, config_argument, presets, run_stage
from lowssl.config import add_overrides_argument, load
from lowssl.pretrain.config import PretrainConfig
from lowssl.pretrain.dry_run import describe, load_plan
from lowssl.pretrain.train import resolved_yaml, train
from lowssl.progress import set_quiet

CONFIGS = Path(__file__).resolve().parent / "configs"


def _configs_help() -> str:
    """The configs shipped with lowssl, for ``--help``: the paper's experiments and the tiny presets."""
    names = presets(CONFIGS)
    lines = []
    for prefix, title in (
        ("", "paper experiments (ImageNet)"),
        ("tiny/", "tiny presets (Fashion-MNIST, CPU)"),
    ):
        shown = [name for name in names if name.startswith(prefix) and "/" not in name.removeprefix(prefix)]
        lines.append(
            f"{title}, pretrain/configs/{prefix}:\n  "
            + textwrap.fill(" ".join(shown), 96).replace("\n", "\n  ")
        )
    lines.append("--config takes a preset's name as listed (tiny/dino_resnet18_ours) or a YAML file")
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
        "--config",
        type=config_argument(CONFIGS),
        required=True,
        help="a preset (tiny/dino_resnet18_ours, listed below) or a YAML file",
    )
    add_overrides_argument(parser, "dotted overrides: epochs=2 optim.base_lr=0.3 output_dir=PATH")
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
    set_quiet(args.quiet)
    if args.print_config:
        print(resolved_yaml(load(PretrainConfig, args.config, args.overrides)))
    elif args.dry_run:  # planned without the data at hand too
        print(describe(load_plan(args.config, args.overrides), args.processes, args.timed_steps))
    else:
        train(load(PretrainConfig, args.config, args.overrides))


if __name__ == "__main__":
    sys.exit(main())
