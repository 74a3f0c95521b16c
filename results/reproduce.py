"""``make reproduce-table5``: pre-train (or reuse finished runs), evaluate, render Table 5.

The stages run as their own commands and talk only through files (checkpoints, results records), as
a user would run them by hand; this module only chains them and prints each command first.

Scales:

- ``tiny`` (default without ImageNet): the tiny presets (Fashion-MNIST, 2 CPU cores) with a
  Table-5 budget (5,000 images, 1 epoch), evaluated with the ``fast_tiny`` linear probe on 10,000
  training images; numbers that show the pipeline works end to end, not ImageNet accuracies.
- ``paper``: the paper's configs (200 and 400 epochs, batch 1024) through torchrun on ImageNet, and
  the authors' ``sslight`` linear protocol.

A finished run (``last.pth`` at its last epoch) is reused; an unfinished one resumes (``resume=auto``);
an evaluation already in the records is not recomputed (evaluate's records cache).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from results.stages import finished_run, report_failure, run

BACKBONES = {"mobilenet_v2": "mobilenet_v2", "resnet18": "resnet18", "resnet34": "resnet34"}


@dataclass(frozen=True)
class Scale:
    dataset: str  # the records' dataset column for this scale's evaluations
    protocol: str
    experiments: tuple[str, ...]  # config stems under pretrain/configs[/tiny]
    config_dir: str
    pretrain_overrides: tuple[str, ...] = ()
    eval_args: tuple[str, ...] = ()
    launcher: tuple[str, ...] = field(default_factory=lambda: (sys.executable, "-m"))


def scales(imagenet: str | None, gpus: int) -> dict[str, Scale]:
    return {
        "tiny": Scale(
            dataset="fashion-mnist/train10000",
            protocol="fast_tiny",
            experiments=tuple(f"dino_{b}_ours" for b in BACKBONES),
            config_dir="pretrain/configs/tiny",
            pretrain_overrides=("data.subset=5000", "epochs=1", "monitor.knn_bank_size=2000"),
            eval_args=("--dataset", "fashion-mnist", "--train-subset", "10000"),
        ),
        "paper": Scale(
            dataset=f"imagefolder:{Path(imagenet).name}" if imagenet else "imagefolder",
            protocol="sslight",
            experiments=tuple(f"dino_{b}_ours{s}" for b in BACKBONES for s in ("", "_400ep")),
            config_dir="pretrain/configs",
            pretrain_overrides=(f"data.root={imagenet}", "amp=bf16", "channels_last=true"),
            eval_args=("--dataset", "imagefolder", "--data-root", str(imagenet)),
            launcher=(sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={gpus}", "-m"),
        ),
    }


def arch_of(experiment: str) -> str:
    return next(arch for short, arch in BACKBONES.items() if f"_{short}_" in f"_{experiment}_")


def reproduce(
    scale_name: str, imagenet: str | None, gpus: int, work_dir: Path, runs_dir: Path, out: Path
) -> None:
    scale = scales(imagenet, gpus)[scale_name]
    evaluate = [sys.executable, "-m", "evaluate", "linear", "--protocol", scale.protocol, *scale.eval_args,
                "--output-dir", str(work_dir / "evaluate"), "--records-dir", str(runs_dir)]  # fmt: skip
    for experiment in scale.experiments:
        run_dir = work_dir / experiment
        checkpoint = run_dir / "last.pth"
        if finished_run(checkpoint) is not None:
            print(f"= {experiment}: finished run found in {run_dir}, reused", flush=True)
        else:
            run([*scale.launcher, "pretrain", "--config", f"{scale.config_dir}/{experiment}.yaml",
                 *scale.pretrain_overrides, f"output_dir={run_dir}", f"records_dir={runs_dir}"])  # fmt: skip
        run([*evaluate, "--checkpoint", str(checkpoint)])
    for arch in dict.fromkeys(arch_of(e) for e in scale.experiments):
        run([*evaluate, "--random-init", "--arch", arch])
    hardware = (
        f"{gpus} x {torch.cuda.get_device_name()}" if scale_name == "paper" and torch.cuda.is_available()
        else f"{os.cpu_count()} CPU cores"
    )  # fmt: skip
    run([sys.executable, "-m", "results", "table5", "--scale", scale_name, "--dataset", scale.dataset,
         "--protocol", scale.protocol, "--hardware", hardware, "--runs-dir", str(runs_dir),
         "--out-md", str(out / "table5.md"), "--out-csv", str(out / "table5.csv")])  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m results.reproduce", description=__doc__.splitlines()[0])
    parser.add_argument("table", choices=["table5"])
    parser.add_argument(
        "--scale", choices=["tiny", "paper"], help="default: paper with --imagenet, else tiny"
    )
    parser.add_argument("--imagenet", help="ImageNet folder holding train/ and val/ (paper scale)")
    parser.add_argument("--gpus", type=int, default=8, help="processes per node at paper scale")
    parser.add_argument("--work-dir", type=Path, help="runs go here (default runs/table5-<scale>)")
    parser.add_argument("--runs-dir", type=Path, help="results records (default results/runs)")
    parser.add_argument("--out", type=Path, default=Path("results"), help="folder for table5.md and .csv")
    args = parser.parse_args(argv)
    scale = args.scale or ("paper" if args.imagenet else "tiny")
    if scale == "paper" and not args.imagenet:
        parser.error(
            "--scale paper needs --imagenet /path/to/imagenet (train/<wnid>/*.JPEG, val/<wnid>/*.JPEG)"
        )
    from lowssl.records import DEFAULT_RUNS_DIR

    try:
        reproduce(scale, args.imagenet, args.gpus, args.work_dir or Path(f"runs/table5-{scale}"),
                  args.runs_dir or DEFAULT_RUNS_DIR, args.out)  # fmt: skip
    except subprocess.CalledProcessError as error:
        return report_failure(error)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
