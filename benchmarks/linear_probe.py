"""Linear probe cost and agreement: the ``fast`` protocol (cached features) vs a full protocol.

Both run through ``python -m lowssl.evaluate linear`` on the same subject and the same Fashion-MNIST subset,
each in a fresh records folder so nothing is cached: random-init ResNet18 and, with ``--checkpoint``,
a pre-trained checkpoint. Reported per subject: both wall times, their ratio (full / fast), both
top-1 (the full protocol's last epoch beside the epoch it reports) and fast - full. The target is
fast >= 20x faster within 0.5 pt of a converged full protocol (docs/tiny-scale.md, "Convergence of
the tiny protocols"); whatever is measured is reported. By default on all training images (the tiny presets
converge there on a pre-trained checkpoint); ``--full-override train_input=augmented`` compares with
the full protocol on augmented crops, as the paper-scale protocols train.

    python -m lowssl.benchmarks.linear_probe [--train-subset 5000] [--checkpoint runs/x/last.pth]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time

import pandas as pd

from lowssl.benchmarks.report import show, write
from lowssl.records import read_records


def probe(protocol: str, source: list[str], train_subset: int | None, overrides: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        command = [
            sys.executable,
            "-m",
            "lowssl.evaluate",
            "linear",
            *source,
            "--protocol",
            protocol,
            "--dataset",
            "fashion-mnist",
            *(["--train-subset", str(train_subset)] if train_subset else []),
            "--no-cache",
            "--output-dir",
            f"{tmp}/out",
            "--records-dir",
            f"{tmp}/records",
            *overrides,
        ]
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        records: pd.DataFrame = read_records(f"{tmp}/records")
    row = records[records["metric"] == "linear_top1"].iloc[-1]
    details = json.loads(row["details"])
    return {
        "protocol": protocol,
        "wall_s": seconds,
        "linear_top1": float(row["value"]),
        "last_epoch_top1": details.get("last_epoch_top1", float(row["value"])),
        "command": " ".join(command[1:]),
    }


def compare(
    source: list[str], subject: str, full: str, train_subset: int | None, overrides: list[str]
) -> dict:
    fast, slow = probe("fast_tiny", source, train_subset, []), probe(full, source, train_subset, overrides)
    return {
        "subject": subject,
        "train_subset": train_subset,
        "fast": fast,
        "full": slow,
        "time_ratio_full_over_fast": slow["wall_s"] / fast["wall_s"],
        "top1_fast_minus_full_last": fast["linear_top1"] - slow["last_epoch_top1"],
        "top1_fast_minus_full_reported": fast["linear_top1"] - slow["linear_top1"],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a pre-trained checkpoint, compared beside random-init ResNet18")
    parser.add_argument("--train-subset", type=int, help="train on N random training images (default all)")
    parser.add_argument("--full", default="sslight_tiny", help="the full protocol (default sslight_tiny)")
    parser.add_argument(
        "--full-override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a value of the full protocol to change, e.g. train_input=augmented (repeatable)",
    )
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    subjects = [(["--random-init", "--arch", "resnet18"], "random-init resnet18")]
    if args.checkpoint:
        subjects.append((["--checkpoint", args.checkpoint], args.checkpoint))
    results = [
        compare(source, subject, args.full, args.train_subset, args.full_override)
        for source, subject in subjects
    ]
    for result in results:
        show(result)
    write(results, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
