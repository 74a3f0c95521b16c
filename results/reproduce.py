"""``make reproduce-table5``: pre-train (or reuse finished runs), evaluate, render Table 5.

The stages run as their own commands and talk only through files (checkpoints, results records), as
a user would run them by hand; this module only chains them and prints each command first.

Scales:

- ``tiny`` (default without ImageNet): the tiny presets (Fashion-MNIST, 2 CPU cores), the paper's
  recipe and the baseline recipe on each backbone at one small budget (:data:`TINY_IMAGES` images,
  one epoch), ``--seeds`` seeds (default 3), evaluated with the ``fast_tiny`` linear probe on 5,000
  training images, beside the two floors (random init, and random init with re-estimated BN
  statistics). The science at this scale is the paired difference ours - baseline at the same
  budget; the absolute numbers show the pipeline, not ImageNet accuracies.
- ``paper``: the paper's configs (200 and 400 epochs, batch 1024) through torchrun on ImageNet, and
  the authors' ``sslight`` linear protocol.

Seeds run one after another, each seed all its runs, and the table is rewritten after every finished
seed (a first table with n=1, then n=2, ...), with the time spent so far. A finished run (``last.pth``
at its last epoch) is reused; an unfinished one resumes (``resume=auto``); an evaluation already in
the records is not recomputed (evaluate's records cache).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lowssl.paths import home
from lowssl.results.commands import python_module, stage_command, torchrun
from lowssl.results.stages import finished_run, report_failure, run

BACKBONES = {"mobilenet_v2": "mobilenet_v2", "resnet18": "resnet18", "resnet34": "resnet34"}
#: The tiny budget of one pre-training run: this many Fashion-MNIST images, one epoch. Chosen so that
#: 3 seeds of 6 runs (2 recipes x 3 backbones) and their evaluations fit in 30 min on 2 CPU cores
#: (docs/tiny-scale.md, "Table 5 at tiny scale").
TINY_IMAGES = 1500


@dataclass(frozen=True)
class Scale:
    dataset: str  # the records' dataset column for this scale's evaluations
    protocol: str
    experiments: tuple[str, ...]  # config stems under pretrain/configs[/tiny]
    config_dir: str
    budget: str  # each run's pre-training budget, for the table's header
    seeds: int  # default number of seeds
    pretrain_overrides: tuple[str, ...] = ()
    eval_args: tuple[str, ...] = ()
    floors: tuple[tuple[str, ...], ...] = (("--random-init",),)  # evaluate options of each floor
    run_tag: str = ""  # in every run folder's name, so a run of another budget is never reused
    launcher: tuple[str, ...] = field(default_factory=python_module)


def scales(
    imagenet: str | None, gpus: int, nodes: int = 1, rdzv_endpoint: str | None = None
) -> dict[str, Scale]:
    return {
        "tiny": Scale(
            dataset="fashion-mnist/train5000",
            protocol="fast_tiny",
            experiments=tuple(f"dino_{b}_{recipe}" for b in BACKBONES for recipe in ("baseline", "ours")),
            config_dir="pretrain/configs/tiny",
            budget=f"{TINY_IMAGES:,} Fashion-MNIST images x 1 epoch, batch 64",
            run_tag=f"-{TINY_IMAGES}x1",
            seeds=3,
            pretrain_overrides=(f"data.subset={TINY_IMAGES}", "epochs=1", "monitor.knn_bank_size=2000"),
            eval_args=("--dataset", "fashion-mnist", "--train-subset", "5000"),
            floors=(("--random-init",), ("--random-init", "--recalibrate-bn")),
        ),
        "paper": Scale(
            dataset=f"imagefolder:{Path(imagenet).name}" if imagenet else "imagefolder",
            protocol="sslight",
            experiments=tuple(f"dino_{b}_ours{s}" for b in BACKBONES for s in ("", "_400ep")),
            config_dir="pretrain/configs",
            budget="the paper's: 200 / 400 epochs of ImageNet-1k, batch 1024",
            seeds=1,
            pretrain_overrides=(f"data.root={imagenet}", "amp=bf16", "channels_last=true"),
            eval_args=("--dataset", "imagefolder", "--data-root", str(imagenet)),
            launcher=torchrun(gpus, nodes, rdzv_endpoint),
        ),
    }


def arch_of(experiment: str) -> str:
    return next(arch for short, arch in BACKBONES.items() if f"_{short}_" in f"_{experiment}_")


def evaluate_command(scale: Scale, work_dir: Path, runs_dir: Path) -> list[str]:
    """The linear evaluation of this scale, less what is evaluated (a checkpoint or a floor)."""
    return stage_command(
        "evaluate",
        "linear",
        "--protocol",
        scale.protocol,
        *scale.eval_args,
        "--output-dir",
        str(work_dir / "evaluate"),
        "--records-dir",
        str(runs_dir),
    )


def pretrain_unless_finished(scale: Scale, experiment: str, seed: int, run_dir: Path, runs_dir: Path) -> None:
    """Pre-train ``experiment`` at ``seed`` into ``run_dir``; a finished run there is reused, an
    unfinished one resumes (``resume=auto``)."""
    if finished_run(run_dir / "last.pth") is not None:
        print(f"= {experiment} seed {seed}: finished run found in {run_dir}, reused", flush=True)
        return
    run(
        stage_command(
            "pretrain",
            "--config",
            f"{scale.config_dir}/{experiment}.yaml",
            *scale.pretrain_overrides,
            f"seed={seed}",
            f"output_dir={run_dir}",
            f"records_dir={runs_dir}",
            launcher=scale.launcher,
        )
    )


def table5_command(
    scale_name: str, scale: Scale, hardware: str, runs_dir: Path, budget: str, out: Path
) -> list[str]:
    return stage_command(
        "results",
        "table5",
        "--scale",
        scale_name,
        "--dataset",
        scale.dataset,
        "--protocol",
        scale.protocol,
        "--hardware",
        hardware,
        "--runs-dir",
        str(runs_dir),
        "--budget",
        budget,
        "--out-md",
        str(out / "table5.md"),
        "--out-csv",
        str(out / "table5.csv"),
    )


def reproduce(
    scale_name: str,
    imagenet: str | None,
    gpus: int,
    work_dir: Path,
    runs_dir: Path,
    out: Path,
    seeds: int | None = None,
    nodes: int = 1,
    rdzv_endpoint: str | None = None,
) -> None:
    scale = scales(imagenet, gpus, nodes, rdzv_endpoint)[scale_name]
    seeds = scale.seeds if seeds is None else seeds
    evaluate = evaluate_command(scale, work_dir, runs_dir)
    hardware = (
        f"{nodes} x {gpus} x {torch.cuda.get_device_name()}"
        if scale_name == "paper" and torch.cuda.is_available()
        else f"{os.cpu_count()} CPU cores"
    )
    start = time.perf_counter()
    for seed in range(seeds):
        for experiment in scale.experiments:
            run_dir = work_dir / f"{experiment}{scale.run_tag}-seed{seed}"
            pretrain_unless_finished(scale, experiment, seed, run_dir, runs_dir)
            run([*evaluate, "--checkpoint", str(run_dir / "last.pth")])
        for arch in dict.fromkeys(arch_of(e) for e in scale.experiments):
            for floor in scale.floors:
                run([*evaluate, *floor, "--arch", arch, "--seed", str(seed)])
        elapsed = time.perf_counter() - start
        budget = f"{scale.budget}; seeds 0-{seed} of {seeds} done after {elapsed / 60:.1f} min"
        run(table5_command(scale_name, scale, hardware, runs_dir, budget, out))
        print(f"= seed {seed} done: {seed + 1} of {seeds} seeds in {elapsed / 60:.1f} min", flush=True)


def seed_count(text: str) -> int:
    count = int(text)
    if count < 1:
        raise argparse.ArgumentTypeError(
            f"--seeds {count}: a table needs at least 1 seed (3 give an interval)"
        )
    return count


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lowssl.results.reproduce", description=__doc__.splitlines()[0]
    )
    parser.add_argument("table", choices=["table5"])
    parser.add_argument(
        "--scale", choices=["tiny", "paper"], help="default: paper with --imagenet, else tiny"
    )
    parser.add_argument("--imagenet", help="ImageNet folder holding train/ and val/ (paper scale)")
    parser.add_argument("--gpus", type=int, default=8, help="processes per node at paper scale")
    parser.add_argument("--nnodes", type=int, default=1, help="machines at paper scale (torchrun --nnodes)")
    parser.add_argument("--rdzv-endpoint", help="HOST:PORT on the first machine, for --nnodes above 1")
    parser.add_argument("--seeds", type=seed_count, help="seeds 0..N-1 (default: 3 tiny, 1 paper)")
    parser.add_argument("--work-dir", type=Path, help="runs go here (default runs/table5-<scale>)")
    parser.add_argument("--runs-dir", type=Path, help="results records (default results/runs)")
    parser.add_argument("--out", type=Path, default=Path("results"), help="folder for table5.md and .csv")
    args = parser.parse_args(argv)
    scale = args.scale or ("paper" if args.imagenet else "tiny")
    if scale == "paper" and not args.imagenet:
        parser.error(
            "--scale paper needs --imagenet /path/to/imagenet (train/<wnid>/*.JPEG, val/<wnid>/*.JPEG)"
        )
    if args.nnodes > 1 and not args.rdzv_endpoint:
        parser.error(
            f"--nnodes {args.nnodes} needs --rdzv-endpoint HOST:PORT (a free port on the first machine)"
        )
    from lowssl.records import default_runs_dir

    try:
        reproduce(
            scale,
            args.imagenet,
            args.gpus,
            args.work_dir or home() / "runs" / f"table5-{scale}",
            args.runs_dir or default_runs_dir(),
            args.out,
            args.seeds,
            args.nnodes,
            args.rdzv_endpoint,
        )
    except subprocess.CalledProcessError as error:
        return report_failure(error)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
