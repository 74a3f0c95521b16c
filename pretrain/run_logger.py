"""What a pre-training run writes and says as it goes: ``log.csv`` and TensorBoard scalars in the run
folder, mirrored to Weights & Biases when ``$WANDB_PROJECT`` is set (:class:`RunLogger`), with the images
per second and data-wait fraction of its steps (:class:`Throughput`); the run's first and last lines
on the console (:func:`first_line`, :func:`print_last_line`).
"""

from __future__ import annotations

import csv
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from lowssl.config import ConfigError
from lowssl.pretrain.run import Run
from lowssl.progress import say


def first_line(run: Run, steps_per_epoch: int, records_file: Path) -> str:
    """The run's first line: where it lives, fresh or resumed, what it runs on, where its records go."""
    cfg, ctx = run.cfg, run.ctx
    start = (
        f"resumed from {run.resumed_from} at global step {run.global_step}"
        if run.resumed_from is not None
        else "fresh run"
    )
    stop = f", stopping at max_steps={cfg.max_steps}" if cfg.max_steps is not None else ""
    processes = f" x {ctx.world_size} processes" if ctx.world_size > 1 else ""
    return (
        f"pretrain {cfg.experiment}: {start} in {run.run_dir.absolute()}; {cfg.epochs} epochs of "
        f"{steps_per_epoch} steps{stop}; {ctx.device}{processes}, {torch.get_num_threads()} threads; "
        f"records -> {records_file.absolute()}"
    )


def print_last_line(run: Run, why: str, steps_per_epoch: int, records: Path | None, started: float) -> None:
    """The run's last line (printed under --quiet too): why it stopped and what it wrote where."""
    if not run.ctx.is_main:
        return
    cfg, step = run.cfg, run.global_step
    epoch, in_epoch = divmod(step, steps_per_epoch)
    position = (
        f"end of epoch {epoch} of {cfg.epochs}"
        if in_epoch == 0
        else f"epoch {epoch + 1}, step {in_epoch} of {steps_per_epoch}"
    )
    if why == "complete":
        print(
            f"pretrain already complete: {run.last_path.absolute()} holds global step {step} ({position}); "
            f"nothing was trained (raise epochs= or max_steps= to continue it, resume=never to start over)"
        )
        return
    reason = f"stopped at max_steps={cfg.max_steps}" if why == "max_steps" else "done"
    recorded = (
        f"records {records.absolute()}"
        if records is not None
        else "no records (no epoch ended with a monitor value)"
    )
    print(
        f"pretrain {reason} after {time.monotonic() - started:.0f} s: global step {step} ({position}); "
        f"checkpoint {run.last_path.absolute()}; {recorded}"
    )


class RunLogger:
    """TensorBoard scalars and a CSV log (``log.csv``) in the run folder, mirrored to Weights & Biases
    when ``$WANDB_PROJECT`` is set (wandb's own variable; ``pip install wandb``).

    A row every ``every_steps`` optimiser steps (counted over the whole run, so a resumed run logs the
    same steps as an uninterrupted one) and at every step ``step(..., last=True)`` marks: the last of
    an epoch (whose loss the epoch's metrics report) and of the run. A row holds that step's loss
    terms, LR and weight decay, the images per second and the seconds spent waiting for data (with
    their fraction of the step time) since the previous row, and the unreadable images skipped so far.
    A resumed run appends rows under its log.csv's header (one written before a column existed keeps
    its columns). The epoch's line (:meth:`epoch`) and the end of a run stopped inside an epoch
    (:meth:`close`) summarise the images per second and data-wait fraction of their steps.
    """

    def __init__(
        self, run_dir: Path, enabled: bool, every_steps: int, provenance: dict | None = None
    ) -> None:
        self.enabled = enabled
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        run_dir.mkdir(parents=True, exist_ok=True)
        self.wandb = _start_wandb(run_dir, provenance or {}) if os.environ.get("WANDB_PROJECT") else None
        self.writer = SummaryWriter(str(run_dir / "tensorboard"))
        self.csv_path = run_dir / "log.csv"
        self.every_steps = every_steps
        self.fieldnames: list[str] | None = None  # log.csv's columns, once known
        self.skipped = 0
        self.since_row, self.since_summary = Throughput(), Throughput()

    def step(
        self,
        step: int,
        epoch: int,
        terms: dict,
        values,
        images: int,
        seconds: float,
        data_wait_s: float,
        skipped: int,
        last: bool = False,
    ) -> None:
        if not self.enabled:
            return
        self.skipped += skipped
        self.since_row.add(images, seconds, data_wait_s)
        self.since_summary.add(images, seconds, data_wait_s)
        if not last and step % self.every_steps != 0:
            return
        row = {
            "step": step,
            "epoch": epoch,
            **{k: float(v) for k, v in terms.items()},
            "lr": values.lr,
            "weight_decay": values.weight_decay,
            **self.since_row.rates(),
            "data_wait_s": self.since_row.data_wait_s,
            "skipped_images": self.skipped,
        }
        self.since_row = Throughput()
        if self.fieldnames is None:
            self.fieldnames = _csv_header(self.csv_path) or list(row)
        new = not self.csv_path.exists() or self.csv_path.stat().st_size == 0
        with open(self.csv_path, "a", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=self.fieldnames, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)
        for key, value in row.items():
            if key not in ("step", "epoch"):
                self.writer.add_scalar(f"train/{key}", value, step)

    def epoch(self, epoch: int, metrics: dict) -> dict:
        """Writes the epoch's monitor values; returns the images per second and data-wait fraction of
        its steps (since the previous summary; {} on a process that does not log)."""
        if not self.enabled:
            return {}
        for key, value in metrics.items():
            if key != "epoch":
                self.writer.add_scalar(f"monitor/{key}", value, epoch)
        throughput, self.since_summary = self.since_summary.rates(), Throughput()
        for key, value in throughput.items():
            self.writer.add_scalar(f"epoch/{key}", value, epoch)
        return throughput

    def close(self) -> None:
        if self.enabled:
            if self.since_summary.steps:  # the run stopped inside an epoch (max_steps, a signal)
                rates = ", ".join(f"{k} {v:.4g}" for k, v in self.since_summary.rates().items())
                say(f"last {self.since_summary.steps} steps (an unfinished epoch): {rates}")
            self.writer.close()
            if self.wandb is not None:
                self.wandb.finish()


@dataclass
class Throughput:
    """Images, seconds and seconds spent waiting for data, summed over some steps."""

    steps: int = 0
    images: int = 0
    seconds: float = 0.0
    data_wait_s: float = 0.0

    def add(self, images: int, seconds: float, data_wait_s: float) -> None:
        self.steps += 1
        self.images += images
        self.seconds += seconds
        self.data_wait_s += data_wait_s

    def rates(self) -> dict:
        seconds = max(self.seconds, 1e-9)
        return {"images_per_s": self.images / seconds, "data_wait_fraction": self.data_wait_s / seconds}


def _csv_header(path: Path) -> list[str] | None:
    """The columns of the CSV file at ``path``; None if it does not exist or is empty."""
    if not path.exists():
        return None
    with open(path, newline="") as file:
        return next(csv.reader(file), None)


def _start_wandb(run_dir: Path, provenance: dict):
    """A W&B run that mirrors the TensorBoard scalars (wandb's ``sync_tensorboard``: one set of logging
    calls, two sinks); a resumed run continues its W&B run (same id: the run folder and config hash)."""
    try:
        import wandb
    except ImportError as error:
        raise ConfigError("$WANDB_PROJECT is set but wandb is not installed: pip install wandb") from error
    run_id = f"{run_dir.name}-{provenance.get('config_hash', '')[:8]}".strip("-")
    return wandb.init(
        project=os.environ["WANDB_PROJECT"],
        id=run_id,
        name=run_dir.name,
        dir=str(run_dir),
        config=provenance.get("config", {}),
        sync_tensorboard=True,
        resume="allow",
    )
