"""Issue 29's GPU check: the paper-scale DINO step at batch 128 on one GPU, with its data path on.

For MobileNetV2 and ResNet18 (the paper's ``dino_*_ours`` configs: 2x224 + 6x128 views), in fp32 and
in bf16 + channels_last, this runs the real ``python -m lowssl.pretrain`` on a generated ImageFolder of
natural-size JPEGs (about 500x375) and reports, over the steps after the warm-up: images/s and the
fraction of step time the loop spent blocked waiting for the loader (log.csv's ``data_wait_s``,
pretrain/train.py). Data paths: the CPU multi-crop (the configs' default), then, while the time budget
lasts, the device augmentation path (``device_augment=true``, pretrain/views/gpu.py). Beside each row:

- the step alone, on random views already on the device (``benchmarks.pretrain_step``);
- the loader alone, its workers' steady rate with no step consuming the batches.

A row then reads against min(step alone, loader alone). The loader prefetches up to 4 batches a worker
(pretrain/loader.py): batches queued while the first steps warm up hide a slow loader until the queue
drains, so a data wait near 0 over a short window means "not yet the bottleneck"; the loader-alone
rate says whether it would become one. Nothing depends on this check. Files written to ``--out``
(after each part, so a run cut short still leaves what it measured): gpu_check.json,
gpu_check.md and gpu_check_steps.csv (every step of every run, as log.csv has it).

    OUT=DIR bash benchmarks/gpu_check.sh           # one GPU, 16 cores: at most 380 s of parts (--budget-s)
    OUT=DIR bash benchmarks/gpu_check.sh --small   # the same plumbing on the CPU at a tiny scale
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from multiprocessing import Pool
from pathlib import Path

import torch

from lowssl import distributed
from lowssl.benchmarks.augmentation import natural_jpegs
from lowssl.benchmarks.run import _machine
from lowssl.config import load
from lowssl.data import usable_cpus
from lowssl.io import atomic_write_text
from lowssl.pretrain.config import PretrainConfig
from lowssl.pretrain.train import build_data  # the loader exactly as the runs build it

REPO = Path(__file__).resolve().parent.parent
CONFIGS = {
    "mobilenet_v2": REPO / "pretrain/configs/dino_mobilenet_v2_ours.yaml",
    "resnet18": REPO / "pretrain/configs/dino_resnet18_ours.yaml",
}
PRECISIONS = {
    "fp32": (["amp=none", "channels_last=false"], ["--amp", "none"]),  # (pretrain, pretrain_step) args
    "bf16+channels_last": (["amp=bf16", "channels_last=true"], ["--amp", "bf16", "--channels-last"]),
}
DATA_PATHS = {"cpu multi-crop": "device_augment=false", "device augment": "device_augment=true"}
SHARED_MEMORY = "/dev/shm"  # where loader workers hand their batches over (torch.multiprocessing)


@dataclass(frozen=True)
class Scale:
    images: int  # generated JPEGs: more than one epoch of `steps` batches, so no epoch restarts the workers
    classes: int
    image_size: tuple[int, int]  # width, height
    batch: int
    steps: int  # optimiser steps a run takes
    warmup: int  # first steps left out of the measurement (CUDA and cuDNN start-up, workers' first batch)
    workers: int
    device: str
    extra_overrides: list[str] = field(default_factory=list)
    step_repeats: tuple[int, int] = (8, 3)  # benchmarks.pretrain_step's --steps, --warmup
    # OMP_NUM_THREADS of the runs (None: torch's default). The small check runs one: on a shared 2-core
    # machine two threads per process oversubscribe it, and a small op then took 80 ms instead of 1 ms.
    threads: int | None = None

    def environment(self) -> dict:
        return {**os.environ, "OMP_NUM_THREADS": str(self.threads)} if self.threads else dict(os.environ)


FULL = Scale(
    images=13_000,  # 101 batches of 128 after the 10 held-out images
    classes=10,
    image_size=(500, 375),
    batch=128,
    steps=100,
    warmup=10,
    workers=max(1, min(14, usable_cpus() - 2)),  # the main process and the pin-memory thread keep 2 cores
    device="cuda",
)
SMALL = Scale(
    images=64,
    classes=4,
    image_size=(128, 96),
    batch=8,
    steps=3,
    warmup=1,
    workers=2,
    device="cpu",
    extra_overrides=["views.global_size=64", "views.local_size=32"],
    step_repeats=(2, 1),
    threads=1,
)


class Deadline:
    """The check's time budget: what is left, and whether a part expected to take ``seconds`` fits."""

    def __init__(self, budget_s: float) -> None:
        self.end = time.monotonic() + budget_s

    def left(self) -> float:
        return self.end - time.monotonic()

    def fits(self, seconds: float) -> bool:
        return self.left() > seconds


def workers_that_fit_shared_memory(scale: Scale, free_bytes: int) -> int:
    """The loader workers whose batches fit ``free_bytes`` of /dev/shm, where workers hand batches over:
    each holds up to 4 prefetched batches (pretrain/loader.py) and builds one more, float32 views of the
    paper's sizes (2x224 + 6x128: 305 MB a batch of 128). Fewer than ``scale.workers`` on a container's
    small /dev/shm, where they would die with a bus error; at least 1."""
    views = load(
        PretrainConfig,
        CONFIGS["resnet18"],
        run_overrides(scale, Path("."), Path("."), "fp32", "cpu multi-crop"),  # its views; no folder is read
    ).views
    pixels = views.n_global * views.global_size**2 + views.n_local * views.local_size**2
    batch_bytes = scale.batch * 3 * pixels * 4
    return max(1, min(scale.workers, free_bytes // (5 * batch_bytes)))


# ---- the images -----------------------------------------------------------------------------------------


def _write_jpegs(folder: Path, first: int, count: int, classes: int, size: tuple[int, int]) -> None:
    for offset, data in enumerate(natural_jpegs(count, seed=first, size=size)):
        index = first + offset
        (folder / f"class_{index % classes:02d}" / f"{index:06d}.jpg").write_bytes(data)


def make_image_folder(root: Path, scale: Scale, processes: int) -> float:
    """``root/train/class_NN/*.jpg``, generated by ``processes`` processes; returns the seconds taken."""
    start = time.perf_counter()
    folder = root / "train"
    for label in range(scale.classes):
        (folder / f"class_{label:02d}").mkdir(parents=True)
    chunk = -(-scale.images // processes)
    jobs = [
        (folder, first, min(chunk, scale.images - first), scale.classes, scale.image_size)
        for first in range(0, scale.images, chunk)
    ]
    with Pool(processes) as pool:
        pool.starmap(_write_jpegs, jobs)
    return time.perf_counter() - start


# ---- the runs -------------------------------------------------------------------------------------------


def run_overrides(scale: Scale, root: Path, run_dir: Path, precision: str, data_path: str) -> list[str]:
    """The paper config at one GPU's batch, on the generated images, for ``scale.steps`` steps, every
    step logged, monitors off (their passes are no part of a step) and the run folder in ``run_dir``."""
    return [
        "data.dataset=imagefolder",
        f"data.root={root}",
        f"data.num_workers={scale.workers}",
        f"batch_size={scale.batch}",
        f"max_steps={scale.steps}",
        f"device={scale.device}",
        "monitor.knn_every_epochs=0",
        "monitor.online_linear=false",
        "monitor.held_out_per_class=1",
        "log_every_steps=1",
        "resume=never",
        f"output_dir={run_dir}",
        f"records_dir={run_dir / 'records'}",
        *PRECISIONS[precision][0],
        DATA_PATHS[data_path],
        *scale.extra_overrides,
    ]


def window_rates(log_rows: list[dict], scale: Scale) -> dict:
    """Images/s and the data-wait fraction over the steps after the warm-up (log.csv: a row a step)."""
    rows = [row for row in log_rows if int(row["step"]) > scale.warmup]
    seconds = sum(scale.batch / float(row["images_per_s"]) for row in rows)  # the row's one step
    return {
        "steps_measured": len(rows),
        "images_per_s": scale.batch * len(rows) / seconds,
        "data_wait_fraction": sum(float(row["data_wait_s"]) for row in rows) / seconds,
    }


def pretrain_run(
    scale: Scale, root: Path, work: Path, backbone: str, precision: str, data_path: str, timeout: float
) -> dict:
    """One real ``python -m lowssl.pretrain`` run; its measured window, wall time and status."""
    name = f"{backbone}_{precision}_{data_path}".replace(" ", "_").replace("+", "_")
    run_dir = work / name
    command = [
        sys.executable,
        "-m",
        "lowssl.pretrain",
        "--config",
        str(CONFIGS[backbone]),
        *run_overrides(scale, root, run_dir, precision, data_path),
    ]
    row = {"backbone": backbone, "precision": precision, "data_path": data_path}
    log_path = work / f"{name}.out"
    start = time.monotonic()
    with open(log_path, "w") as log:
        try:
            returncode = subprocess.run(
                command,
                cwd=REPO,
                env=scale.environment(),
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=timeout,
            ).returncode
        except subprocess.TimeoutExpired:
            returncode = None
    row["run_wall_s"] = time.monotonic() - start
    output = log_path.read_text().splitlines()
    if returncode != 0:
        row["status"] = "timed out" if returncode is None else f"failed (exit {returncode})"
        print(f"{name}: {row['status']}; its output ends:\n  " + "\n  ".join(output[-15:]), flush=True)
        return row
    with open(run_dir / "log.csv", newline="") as file:
        row["log"] = list(csv.DictReader(file))
    row.update(status="ok", **window_rates(row["log"], scale))
    print(
        f"{name}: {row['images_per_s']:.0f} images/s, data wait {row['data_wait_fraction']:.3f} of step time "
        f"over steps {scale.warmup + 1}-{scale.steps} ({row['run_wall_s']:.0f} s wall)",
        flush=True,
    )
    return row


def step_alone(
    scale: Scale, root: Path, work: Path, precision: str, backbones: list[str], timeout: float
) -> dict:
    """``benchmarks.pretrain_step``'s DINO step on random views already on the device, at the runs'
    batch and view sizes: {backbone: images/s}."""
    overrides = run_overrides(scale, root, work / "step_alone", precision, "cpu multi-crop")
    views = load(PretrainConfig, CONFIGS[backbones[0]], overrides).views
    out = work / f"step_{precision.replace('+', '_')}.json"
    repeats, warmup = scale.step_repeats
    command = [
        sys.executable,
        "-m",
        "lowssl.benchmarks.pretrain_step",
        "--device",
        scale.device,
        "--methods",
        "dino",
        "--backbones",
        *backbones,
        "--batch",
        str(scale.batch),
        "--global-size",
        str(views.global_size),
        "--local-size",
        str(views.local_size),
        "--n-local",
        str(views.n_local),
        "--steps",
        str(repeats),
        "--warmup",
        str(warmup),
        *PRECISIONS[precision][1],
        "--out",
        str(out),
    ]
    try:
        result = subprocess.run(
            command, cwd=REPO, env=scale.environment(), capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        print(f"step alone, {precision}: timed out after {timeout:.0f} s", flush=True)
        return {}
    if result.returncode != 0:
        print(f"step alone, {precision}: failed; its output ends:\n{result.stderr[-2000:]}", flush=True)
        return {}
    rates = {r["backbone"]: r["images_per_s"] for r in json.loads(out.read_text())}
    print(
        f"step alone, {precision}: " + ", ".join(f"{b} {v:.0f} images/s" for b, v in rates.items()),
        flush=True,
    )
    return rates


def loader_alone(scale: Scale, root: Path, work: Path, data_path: str) -> float:
    """The loader's steady rate in images/s with nothing consuming its batches: the time from its first
    round of batches (one a worker, arriving together after the workers start) to the last of the
    next three rounds (fewer if the epoch is shorter)."""
    overrides = run_overrides(scale, root, work / "loader_alone", "fp32", data_path)
    cfg = load(PretrainConfig, CONFIGS["resnet18"], overrides)
    ctx = distributed.Context(rank=0, local_rank=0, world_size=1, device=torch.device(scale.device))
    data = build_data(cfg, ctx)
    data.sampler.set_epoch(0)
    settle = scale.workers
    batches = min(settle + 3 * scale.workers, data.sampler.steps_per_epoch)
    batches_iter = iter(data.loader)
    arrivals = []
    for _ in range(batches):
        next(batches_iter)
        arrivals.append(time.perf_counter())
    del batches_iter  # stops the workers
    rate = (batches - settle) * scale.batch / (arrivals[-1] - arrivals[settle - 1])
    print(f"loader alone, {data_path}, {scale.workers} workers: {rate:.0f} images/s", flush=True)
    return rate


# ---- the report -----------------------------------------------------------------------------------------


@dataclass
class Report:
    """Everything measured so far; written whole to ``out`` after each part."""

    out: Path
    scale: Scale
    machine: dict
    images_s: float  # seconds to generate the images
    runs: list[dict] = field(default_factory=list)
    step_alone: dict = field(default_factory=dict)  # precision -> {backbone: images/s}
    loader_alone: dict = field(default_factory=dict)  # data path -> images/s
    skipped: list[str] = field(default_factory=list)

    def rows(self) -> list[dict]:
        rows = []
        for run in self.runs:
            row = {key: value for key, value in run.items() if key != "log"}
            row["step_alone_images_per_s"] = self.step_alone.get(run["precision"], {}).get(run["backbone"])
            row["loader_alone_images_per_s"] = self.loader_alone.get(run["data_path"])
            rows.append(row)
        return rows

    def write(self) -> None:
        summary = {
            "machine": self.machine,
            "scale": asdict(self.scale),
            "image_generation_s": self.images_s,
            "rows": self.rows(),
            "step_alone": self.step_alone,
            "loader_alone": self.loader_alone,
            "skipped_for_time": self.skipped,
        }
        atomic_write_text(self.out / "gpu_check.json", json.dumps(summary, indent=1))
        atomic_write_text(self.out / "gpu_check.md", self.markdown())
        atomic_write_text(self.out / "gpu_check_steps.csv", self.steps_csv())

    def markdown(self) -> str:
        scale = self.scale
        number = lambda value, digits=0: "-" if value is None else f"{value:.{digits}f}"  # noqa: E731
        lines = [
            "# GPU check (issue 29): the paper-scale DINO step with its data path",
            "",
            f"Machine: {self.machine['description']}.",
            "",
            f"`python -m lowssl.pretrain --config pretrain/configs/dino_<backbone>_ours.yaml` on {scale.images} "
            f"generated JPEGs of {scale.image_size[0]}x{scale.image_size[1]} in {scale.classes} classes "
            f"(made in {self.images_s:.1f} s), batch {scale.batch}, {scale.workers} loader workers, "
            f"{scale.steps} steps, measured over steps {scale.warmup + 1}-{scale.steps}. Step alone: "
            "`benchmarks.pretrain_step` (random views on the device, same batch and views). Loader alone: "
            "its steady rate with nothing consuming it (benchmarks/gpu_check.py).",
            "",
            "| backbone | precision | data path | images/s | data wait fraction | step alone images/s | "
            "loader alone images/s | run wall s | status |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for row in self.rows():
            lines.append(
                f"| {row['backbone']} | {row['precision']} | {row['data_path']} | "
                f"{number(row.get('images_per_s'))} | {number(row.get('data_wait_fraction'), 3)} | "
                f"{number(row['step_alone_images_per_s'])} | {number(row['loader_alone_images_per_s'])} | "
                f"{number(row['run_wall_s'])} | {row['status']} |"
            )
        lines += [
            "",
            "A steady run reaches min(step alone, loader alone). A data wait near 0 where the loader alone is "
            "slower than the step alone means the loader's prefetched batches (4 a worker) had not run out "
            "within the window, not that it keeps up.",
        ]
        if self.skipped:
            lines += ["", "Left out for the time budget: " + "; ".join(self.skipped) + "."]
        return "\n".join(lines) + "\n"

    def steps_csv(self) -> str:
        rows = [
            {
                "backbone": run["backbone"],
                "precision": run["precision"],
                "data_path": run["data_path"],
                **step,
            }
            for run in self.runs
            for step in run.get("log", [])
        ]
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=list(dict.fromkeys(key for row in rows for key in row)))
        writer.writeheader()
        writer.writerows(rows)
        return text.getvalue()


def machine() -> dict:
    return {
        "description": _machine(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cpu_count": usable_cpus(),
        "shm_free_gib": shutil.disk_usage(SHARED_MEMORY).free / 2**30,
    }


# ---- the check ------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for gpu_check.json, .md and _steps.csv")
    parser.add_argument("--small", action="store_true", help="the plumbing on the CPU at a tiny scale")
    parser.add_argument("--backbones", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--precisions", nargs="+", choices=list(PRECISIONS), default=list(PRECISIONS))
    parser.add_argument("--data-paths", nargs="+", choices=list(DATA_PATHS), default=list(DATA_PATHS))
    parser.add_argument(
        "--budget-s", type=float, default=380, help="start no part after this many seconds (default 380)"
    )
    args = parser.parse_args(argv)
    deadline = Deadline(args.budget_s)
    scale = SMALL if args.small else FULL
    if scale.device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device here; --small checks the plumbing on the CPU", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(SHARED_MEMORY).free
    workers = workers_that_fit_shared_memory(scale, free)
    if workers < scale.workers:
        print(
            f"{workers} loader workers, not {scale.workers}: the {free / 2**30:.1f} GiB free in "
            f"{SHARED_MEMORY} hold the prefetched batches of {workers}",
            flush=True,
        )
        scale = replace(scale, workers=workers)
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as temp:
        work = Path(temp)
        root = work / "images"
        # before CUDA starts in this process (machine()), as the generating processes are forked
        images_s = make_image_folder(root, scale, processes=max(1, usable_cpus() - 1))
        report = Report(out, scale, machine(), images_s)
        print(
            f"gpu check on {report.machine['description']}; {scale.images} JPEGs in {images_s:.1f} s",
            flush=True,
        )

        def runs(data_path: str) -> None:
            for backbone in args.backbones:
                for precision in args.precisions:
                    # the same run on the first data path says how long this one will take
                    like = [
                        r["run_wall_s"]
                        for r in report.runs
                        if r["backbone"] == backbone and r["precision"] == precision
                    ]
                    if deadline.fits(1.1 * max(like, default=20)):
                        report.runs.append(
                            pretrain_run(scale, root, work, backbone, precision, data_path, deadline.left())
                        )
                    else:
                        report.skipped.append(f"{backbone} {precision} {data_path}")
                    report.write()

        # Most wanted first (the configs' own data path), so that a short budget loses the least.
        first_path, *other_paths = args.data_paths
        runs(first_path)
        for precision in args.precisions:
            if deadline.fits(30):
                report.step_alone[precision] = step_alone(
                    scale, root, work, precision, args.backbones, deadline.left()
                )
            else:
                report.skipped.append(f"step alone {precision}")
            report.write()
        for data_path in args.data_paths:
            if deadline.fits(30):
                report.loader_alone[data_path] = loader_alone(scale, root, work, data_path)
            else:
                report.skipped.append(f"loader alone {data_path}")
            report.write()
        for data_path in other_paths:
            runs(data_path)
    print((out / "gpu_check.md").read_text(), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
