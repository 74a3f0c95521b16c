"""``make bench``: every benchmark, its JSON under ``benchmarks/results/`` and a markdown summary.

Each benchmark runs in its own process (so peak RSS is per configuration), on this machine, with
the machine and library versions in the summary. Medians and spreads come from repeated runs inside
each benchmark.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from lowssl.paths import home

# Under lowssl's home ($LOWSSL_HOME or the working directory), never the installed package.
RESULTS = home() / "benchmarks" / "results"


def _run(name: str, module: str, args: list[str]) -> tuple[list[dict], float]:
    out = RESULTS / f"{name}.json"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", module, *args, "--out", str(out)], check=True)
    return json.loads(out.read_text()), time.perf_counter() - start


def _machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"
    return (
        f"{cpu}, {os.cpu_count()} cores{gpu}; Python {platform.python_version()}, torch {torch.__version__}"
    )


#: (label, backbones, pretrain_step arguments) of the variants table: the tiny presets' crops and a
#: small 224-px batch (the paper's crops), sized so the table takes a few minutes on 2 CPU cores.
VARIANT_ROWS = [
    (
        "tiny",
        ("mobilenet_v2", "resnet18", "resnet34"),
        ["--global-size", "32", "--local-size", "18", "--batch", "32", "--steps", "5", "--warmup", "1"],
    ),
    (
        "224px",
        ("mobilenet_v2", "resnet18"),
        ["--global-size", "224", "--local-size", "128", "--batch", "4", "--steps", "3", "--warmup", "1"],
    ),
]
VARIANT_COLUMNS = ("fp32", "channels_last", "bf16", "bf16+channels_last")


def _variants_section(device: str) -> tuple[str, list[str], float]:
    """The DINO step per backbone in each precision and memory format, and ``channels_last: auto``'s
    choice (its own measurement, lowssl.perf); bf16 columns only where bf16 is native here."""
    rows, total = [], 0.0
    for label, backbones, args in VARIANT_ROWS:
        for backbone in backbones:
            results, seconds = _run(
                f"step_variants_{device}_{label}_{backbone}",
                "lowssl.benchmarks.pretrain_step",
                ["--variants", "--device", device, "--methods", "dino", "--backbones", backbone, *args],
            )
            total += seconds
            for r in results:
                speeds = r["images_per_s"]
                cells = " | ".join(f"{speeds[v]:.1f}" if v in speeds else "n/a" for v in VARIANT_COLUMNS)
                auto = ", ".join(f"{k} {v:.1f}" for k, v in r["auto_measured_images_per_s"].items())
                rows.append(
                    f"| {backbone} | {label} ({r['global_size']}/{r['local_size']}, batch {r['batch']}) | {cells} | "
                    f"**{r['auto_choice']}** ({auto}) |"
                )
    title = (
        f"DINO step img/s on {device} per precision and memory format, and what `channels_last: auto` "
        "picks (median of interleaved steps; auto: its own fastest-of-2 measurement of fwd+bwd)"
    )
    header = [
        "| backbone | crops | fp32 | fp32 channels_last | bf16 autocast | bf16 + channels_last | auto choice (its img/s) |",
        "|---|---|---|---|---|---|---|",
    ]
    return title, header + rows, total


def main() -> int:
    RESULTS.mkdir(parents=True, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    sections = []

    augmentation, seconds = _run(
        "augmentation", "lowssl.benchmarks.augmentation", ["--images", "60", "--repeats", "3"]
    )
    rows = [
        f"| {r['recipe']} (2x224 + 6x{r['local_size']}) | {r['lowssl_images_per_s_median']:.1f} | "
        f"{r['dino_reference_images_per_s_median']:.1f} | {r['speedup_median']:.2f} (spread {r['speedup_spread']:.2f}) |"
        for r in augmentation
    ]
    sections.append(
        (
            "Augmentation, images/s per CPU core (1 thread, ~500x375 JPEGs, decode included)",
            [
                "| recipe | lowssl | DINO reference (PIL) | lowssl / reference, median |",
                "|---|---|---|---|",
                *rows,
            ],
            seconds,
        )
    )

    step_rows = []
    step_seconds = 0.0
    for label, args in [
        (
            "tiny",
            [
                "--global-size",
                "32",
                "--local-size",
                "18",
                "--batch",
                "32",
                "--steps",
                "7",
                "--warmup",
                "2",
                "--moco-queue",
                "4096",
            ],  # pretrain/configs/tiny/_base_/moco.yaml,
        ),
        (
            "224px",
            ["--global-size", "224", "--local-size", "128", "--batch", "4", "--steps", "3", "--warmup", "1"],
        ),
    ]:
        for backbone in ("mobilenet_v2", "resnet18"):
            results, seconds = _run(
                f"pretrain_step_{device}_{label}_{backbone}",
                "lowssl.benchmarks.pretrain_step",
                ["--device", device, "--backbones", backbone, *args],
            )
            step_seconds += seconds
            for r in results:
                step_rows.append(
                    f"| {r['method']} | {backbone} | {label} ({r['global_size']}/{r['local_size']}, batch {r['batch']}) | "
                    f"{r['images_per_s']:.1f} | {r['bare_images_per_s']:.1f} | {r['overhead_ratio']:.3f} "
                    f"(spread {r['overhead_ratio_spread']:.3f}) | {r['student_only_ratio']:.2f} "
                    f"(spread {r['student_only_ratio_spread']:.2f}) | {r['peak_rss_mib']:.0f} |"
                )
    sections.append(
        (
            f"Pre-training step on {device}: full step vs the method's network passes (the limit: "
            "student forward+backward, teacher / key-encoder forward; per-repeat ratios, steps interleaved)",
            [
                "| method | backbone | crops | step img/s | limit img/s | step / limit, median | "
                "step / student fwd+bwd alone, median | peak RSS MiB (process, cumulative over its methods) |",
                "|---|---|---|---|---|---|---|---|",
                *step_rows,
            ],
            step_seconds,
        )
    )

    sections.append(_variants_section(device))

    probes, seconds = _run("linear_probe", "lowssl.benchmarks.linear_probe", ["--train-subset", "5000"])
    rows = [
        f"| {r['subject']} | {r['fast']['wall_s']:.0f} | {r['full']['protocol']} {r['full']['wall_s']:.0f} | "
        f"{r['time_ratio_full_over_fast']:.1f}x | {r['fast']['linear_top1']:.2f} | {r['full']['last_epoch_top1']:.2f} "
        f"({r['full']['linear_top1']:.2f} reported) | {r['top1_fast_minus_full_last']:+.2f} |"
        for r in probes
    ]
    sections.append(
        (
            "Linear probe on Fashion-MNIST (5,000 training images): fast_tiny vs the full protocol",
            [
                "| subject | fast_tiny s | full s | full / fast | fast top-1 | full top-1, last epoch | fast - full |",
                "|---|---|---|---|---|---|---|",
                *rows,
            ],
            seconds,
        )
    )

    lines = [
        "# lowssl benchmarks",
        "",
        f"Machine: {_machine()}.",
        "",
        "Written by `make bench` (`python -m lowssl.benchmarks.run`); the JSON files beside this one hold every run.",
        "",
    ]
    for title, table, seconds in sections:
        lines += [f"## {title}", "", *table, "", f"({seconds:.0f} s)", ""]
    (RESULTS / f"summary_{device}.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
