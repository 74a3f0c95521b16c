"""Linear probe cost: the ``fast`` protocol (cached features) vs the full ``sslight`` protocol.

Both run through ``python -m evaluate linear`` on the same checkpoint (random-init ResNet18 unless one
is given) and the same Fashion-MNIST subset, each in a fresh records folder so nothing is cached;
wall time and top-1 are reported side by side.

    python -m benchmarks.linear_probe --train-subset 5000
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time

import pandas as pd

from benchmarks.report import show, write
from lowssl.records import read_records


def probe(protocol: str, source: list[str], train_subset: int, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "evaluate", "linear", *source, "--protocol", protocol,
                   "--dataset", "fashion-mnist", "--train-subset", str(train_subset), "--no-cache",
                   "--output-dir", f"{tmp}/out", "--records-dir", f"{tmp}/records", *extra]  # fmt: skip
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        records: pd.DataFrame = read_records(f"{tmp}/records")
    top1 = float(records.loc[records["metric"] == "linear_top1", "value"].iloc[-1])
    return {"protocol": protocol, "wall_s": seconds, "linear_top1": top1, "train_subset": train_subset,
            "command": " ".join(command[1:])}  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="default: random-init resnet18")
    parser.add_argument("--train-subset", type=int, default=5000)
    parser.add_argument(
        "--full-epochs", type=int, default=2, help="epochs of the full protocol's tiny preset"
    )
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    source = ["--checkpoint", args.checkpoint] if args.checkpoint else ["--random-init", "--arch", "resnet18"]
    results = [
        probe("fast_tiny", source, args.train_subset, []),
        probe("sslight_tiny", source, args.train_subset, [f"epochs={args.full_epochs}"]),
    ]
    for result in results:
        show(result)
    write(results, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
