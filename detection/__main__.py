"""``python -m lowssl.detection {convert,train,make-dataset}``.

    python -m lowssl.detection convert --checkpoint runs/x/last.pth --out /tmp/x.pkl
    python -m lowssl.detection train --config mask_rcnn_resnet18_fpn_tiny --weights /tmp/x.pkl
    python -m lowssl.detection train --config detection/configs/mask_rcnn_mobilenet_v2_fpn_1x.yaml \\
        --weights /tmp/x.pkl --num-gpus 8 SOLVER.IMS_PER_BATCH 16

``--config`` is a file or a preset's name (a file of detection/configs/ without .yaml).
    python -m lowssl.detection make-dataset --out data/fmnist_det/custom --train 2000 --val 200
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lowssl.checkpoints import add_checkpoint_arguments, add_trust_argument
from lowssl.checkpoints.cli import CHECKPOINT_FLAG
from lowssl.cli import StageParser, add_quiet_argument, config_argument, presets, run_stage
from lowssl.data import DatasetError
from lowssl.detection.convert import convert_checkpoint, write_pickle
from lowssl.detection.fmnist_det import FmnistDetSpec, generate
from lowssl.detection.train import train
from lowssl.progress import set_quiet
from lowssl.records import default_runs_dir

CONFIGS = Path(__file__).resolve().parent / "configs"


def build_parser() -> argparse.ArgumentParser:
    parser = StageParser(
        prog="python -m lowssl.detection", description="Mask R-CNN FPN transfer (Detectron2)."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    convert = commands.add_parser(
        "convert", help="any checkpoint evaluate/ reads -> Detectron2 weights (.pkl)"
    )
    add_checkpoint_arguments(convert)
    convert.add_argument("--out", type=Path, required=True, help="the Detectron2 pickle to write")
    convert.formerly_positional(CHECKPOINT_FLAG, ("--out", "the pickle to write"))

    train_cmd = commands.add_parser("train", help="train and evaluate Mask R-CNN FPN; results to the records")
    train_cmd.add_argument(
        "--config",
        type=config_argument(CONFIGS),
        required=True,
        help=f"a YAML file, or a preset of detection/configs/: {', '.join(presets(CONFIGS))}",
    )
    train_cmd.add_argument(
        "--weights", required=True, help="a .pkl from `convert`, or `none` for random initialisation"
    )
    train_cmd.add_argument("--num-gpus", type=int, default=1, help="processes (GPUs) per machine")
    train_cmd.add_argument("--num-machines", type=int, default=1)
    train_cmd.add_argument("--machine-rank", type=int, default=0, help="this machine's index")
    train_cmd.add_argument(
        "--dist-url",
        default="auto",
        help="tcp://HOST:PORT of machine 0 (several machines); auto: a free local port",
    )
    train_cmd.add_argument("--output-dir", type=Path, help="default runs/detection/<config>-<arch>-<weights>")
    train_cmd.add_argument("--records-dir", type=Path, default=default_runs_dir())
    train_cmd.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/last_checkpoint")
    train_cmd.add_argument(
        "--print-config", action="store_true", help="print the resolved Detectron2 config (YAML) and exit"
    )
    add_trust_argument(train_cmd, "--weights (Detectron2's own loading)")
    add_quiet_argument(train_cmd)  # before the KEY VALUE overrides, as every flag
    train_cmd.add_argument(
        "opts",
        nargs=argparse.REMAINDER,
        metavar="KEY VALUE",
        help="Detectron2 config overrides, e.g. SOLVER.MAX_ITER 100",
    )

    dataset = commands.add_parser(
        "make-dataset", help="the Fashion-MNIST instance-segmentation set, COCO format"
    )
    dataset.add_argument("--out", type=Path, required=True)
    dataset.add_argument("--train", type=int, default=FmnistDetSpec.train_images, help="training canvases")
    dataset.add_argument("--val", type=int, default=FmnistDetSpec.val_images, help="validation canvases")
    dataset.add_argument("--seed", type=int, default=FmnistDetSpec.seed)
    dataset.add_argument("--canvas", type=int, default=FmnistDetSpec.canvas, help="canvas side in pixels")
    return parser


def run(args) -> int:
    if args.command == "convert":
        converted = convert_checkpoint(
            args.checkpoint, args.checkpoint_format, args.arch, args.branch, args.trust_checkpoint
        )
        write_pickle(converted.payload, args.out)
        source = converted.payload["lowssl"]
        print(
            f"{args.out}: {source['arch']} ({source['format']}, branch {source['branch']}), "
            f"{converted.loaded} backbone tensors load into Mask R-CNN FPN, none missing"
        )
        for note in converted.notes:
            print(f"  note: {note}")
        return 0
    if args.command == "train":
        return train(args)
    if min(args.train, args.val) < 1 or args.canvas < 28:
        raise DatasetError(
            "--train and --val must be at least 1 and --canvas at least 28 (a Fashion-MNIST item)"
        )
    root = generate(args.out, FmnistDetSpec(args.train, args.val, args.seed, args.canvas))
    print(f"{root}: annotations/instances_train.json ({args.train} images), instances_val.json ({args.val})")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    set_quiet(getattr(args, "quiet", False))  # convert and make-dataset print one line each
    return run_stage(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
