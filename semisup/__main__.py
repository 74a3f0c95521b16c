"""``python -m lowssl.semisup {make-subset,check-subset,finetune}``: 1% / 10% semi-supervised fine-tuning.

Examples::

    python -m lowssl.semisup make-subset --dataset fashion-mnist --fraction 0.01 --seed 0 --out subset_1pct.txt
    python -m lowssl.semisup check-subset --dataset imagefolder --data-root /data/imagenet --subset 1percent.txt
    python -m lowssl.semisup finetune --checkpoint ckpt.pth --subset 1pct --dataset fashion-mnist --protocol tiny
    python -m lowssl.semisup finetune --checkpoint ckpt.pth --subset 1pct --protocol tiny epochs=1 batch_size=64
    python -m lowssl.semisup finetune --random-init --arch resnet18 --subset 10pct --protocol tiny max_steps=5
    torchrun --nproc_per_node 8 -m lowssl.semisup finetune --checkpoint ckpt.pth --dataset imagefolder \\
        --data-root /data/imagenet --subset 10percent.txt --protocol paper
"""

from __future__ import annotations

import argparse
import os
import sys

import yaml

from lowssl import distributed
from lowssl.checkpoints import add_checkpoint_arguments
from lowssl.cli import StageParser, add_quiet_argument, run_stage
from lowssl.config import add_overrides_argument, to_dict
from lowssl.data import DATASETS, add_held_out_arguments, build_dataset, default_workers
from lowssl.progress import set_quiet
from lowssl.semisup.arguments import FinetuneArgs
from lowssl.semisup.protocols import available, load_protocol
from lowssl.semisup.subsets import LIST_FORMAT_HELP, load_subset, write_subset
from lowssl.semisup.train import finetune


def _add_dataset(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="fashion-mnist", choices=DATASETS)
    parser.add_argument("--data-root", help="imagefolder: the folder holding train/ and val/")


def _add_list_checks(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--fraction",
        type=float,
        choices=(0.01, 0.1),
        help="which subset a list is (default: its '# fraction:' header, else its size)",
    )
    parser.add_argument(
        "--expected-count",
        type=int,
        help="accept a list of this size instead of floor(fraction x training images)",
    )


def parser() -> argparse.ArgumentParser:
    main = StageParser(
        prog="python -m lowssl.semisup",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("Examples::")[1],
    )
    commands = main.add_subparsers(dest="command", required=True)

    make = commands.add_parser(
        "make-subset",
        help="write a deterministic, class-balanced subset list",
        description=f"List format: {LIST_FORMAT_HELP}.",
    )
    _add_dataset(make)
    make.add_argument("--fraction", type=float, required=True, choices=(0.01, 0.1))
    make.add_argument("--seed", type=int, default=0)
    make.add_argument("--out", required=True, help="the list file to write")

    check = commands.add_parser(
        "check-subset", help="check a list (SimCLR's, the authors', lowssl's) against a dataset"
    )
    _add_dataset(check)
    check.add_argument("--subset", required=True, help="the list file")
    _add_list_checks(check)

    tune = commands.add_parser("finetune", help="fine-tune on a 1%% / 10%% label subset")
    source = tune.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--random-init", action="store_true", help="baseline: the backbone from random init (needs --arch)"
    )
    add_checkpoint_arguments(tune, checkpoint_in=source)
    tune.add_argument(
        "--subset", required=True, help="1pct, 10pct (generated, except on ImageNet) or a list file"
    )
    _add_dataset(tune)
    tune.add_argument("--protocol", default="paper", choices=available(), help="semisup/configs/<name>.yaml")
    tune.add_argument(
        "--new-head",
        action="store_true",
        help="new MLP layers instead of the checkpoint's projection head (checkpoints without one)",
    )
    _add_list_checks(tune)
    tune.add_argument("--subset-seed", type=int, default=0, help="seed of a generated 1pct / 10pct subset")
    tune.add_argument(
        "--output-dir",
        help="default runs/semisup/<checkpoint's run>_<protocol>_<dataset>_<subset> (FinetuneArgs.run_name)",
    )
    tune.add_argument("--records-dir", help="results records (default results/runs/)")
    tune.add_argument("--resume", default="auto", help="auto (from <output-dir>/last.pth), never, or a path")
    add_held_out_arguments(tune, "to choose a hyper-parameter without touching val")
    tune.add_argument(
        "--workers",
        type=int,
        default=default_workers(),
        help="data-loading processes per process (default: 4, at most the CPUs available)",
    )
    tune.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    tune.add_argument(
        "--print-config", action="store_true", help="print the resolved protocol (YAML) and exit"
    )
    add_quiet_argument(tune)
    add_overrides_argument(
        tune,
        "protocol overrides, e.g. epochs=1 (the epochs of the subset run) batch_size=64 (the LR follows "
        "the protocol's scaling rule) image_size=32; smoke runs: max_steps=N (stop after N steps), "
        "max_eval_images=N (evaluate on the first N images)",
    )
    tune.now_overrides(max_steps="--max-steps", max_eval_images="--max-eval-images")
    return main


def make_subset(args: argparse.Namespace) -> None:
    """Write a subset list and print its report."""
    dataset = build_dataset(args.dataset, "train", args.data_root)
    path = write_subset(args.out, dataset, args.dataset, args.fraction, args.seed)
    print(load_subset(path, dataset, args.fraction).report())


def check_subset(args: argparse.Namespace) -> None:
    """Print a subset list's report, or refuse it (SubsetError)."""
    dataset = build_dataset(args.dataset, "train", args.data_root)
    print(load_subset(args.subset, dataset, args.fraction, args.expected_count).report())


def run_finetune(args: argparse.Namespace) -> None:
    """Fine-tune (or print the resolved protocol); one closing line from the main process."""
    set_quiet(args.quiet)
    options = {k: v for k, v in vars(args).items() if k not in ("command", "print_config", "quiet")}
    if args.print_config:
        protocol = load_protocol(args.protocol, FinetuneArgs(**options).protocol_overrides()[0])
        print(yaml.safe_dump(to_dict(protocol), sort_keys=False), end="")
        return
    result = finetune(FinetuneArgs(**options))
    if os.environ.get("RANK", "0") == "0":  # torchrun: one line, from the main process
        print(
            f"semisup {result['stopped_by']}: {result['subset']} top-1 {result['top1']:.2f}, top-5 "
            f"{result['top5']:.2f} (epoch {result['reported_epoch']} of {result['epochs']}); run: "
            f"{result['run_dir']}; records: {result['records']}"
        )


COMMANDS = {"make-subset": make_subset, "check-subset": check_subset, "finetune": run_finetune}


def main(argv=None) -> int:
    """Exit 0, 2 for bad input (a protocol, checkpoint, subset, dataset or run folder), 1 for a run
    that failed (a NaN loss, a full disk): lowssl.cli.run_stage."""
    args = parser().parse_args(argv)
    return run_stage(lambda: COMMANDS[args.command](args), cleanup=distributed.shutdown)


if __name__ == "__main__":
    sys.exit(main())
