"""``make reproduce-gains``: the recipe's gain as the paper reports it (Table 2, Table 3's ResNet18 row).

The paper's claim is relative: the same method and backbone, the same budget, ours recipe minus the
baseline recipe. This command pre-trains both recipes of DINO, SwAV and multi-crop MoCo-v2 on
MobileNetV2 (Table 2) and of DINO on ResNet18 (Table 3) at one tiny budget (``--images`` Fashion-MNIST
images x ``--epochs``), over ``--seeds`` seeds, and reports per experiment the paired gain (ours -
baseline per seed) of the pre-training monitor, mean ± 95 % Student-t interval and n, beside the gain
the paper prints for linear top-1 on ImageNet. The monitor is the authors' online one: weighted 20-NN
(T 0.07) on images held out of the training set (paper Sec. 3.2, "Setting"), here
:data:`HELD_OUT_PER_CLASS` per class so that one number's standard error is below 1 pt, and the
online linear probe on the same held-out images.

Seeds run one after another; the table is rewritten after each finished seed. Finished runs are
reused, unfinished ones resume. The tiny budget shows whether the sign and size of the paper's gain
reproduce at a CPU budget; it is not an ImageNet number.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from lowssl.io import atomic_write_text
from lowssl.paths import home
from lowssl.records import default_runs_dir, read_records, recorded_budget
from lowssl.results.commands import stage_command
from lowssl.results.paper_tables import read_printed_gains
from lowssl.results.reproduce import seed_count
from lowssl.results.stages import finished_run, report_failure, run
from lowssl.results.stats import AggregationError, paired_difference, summarise

#: (paper table, method, backbone) of each experiment; configs pretrain/configs/tiny/<method>_<backbone>_<recipe>.yaml.
EXPERIMENTS = (
    (2, "dino", "mobilenet_v2"),
    (2, "swav", "mobilenet_v2"),
    (2, "moco", "mobilenet_v2"),
    (3, "dino", "resnet18"),
)
#: The rows of results/paper/gains.csv each experiment's gain sits beside.
PAPER_ROWS = {"dino": "dino", "swav": "swav", "moco": "moco_v2_multicrop"}
# 250 per class: 2,500 held-out images, a standard error of at most 1 pt per number (sqrt(.25/2500)).
HELD_OUT_PER_CLASS = 250
METRICS = {"knn_top1_heldout": "held-out 20-NN top-1", "online_linear_top1": "online linear top-1"}


def budget_overrides(images: int, epochs: int, seed: int) -> list[str]:
    return [
        f"data.subset={images}",
        f"epochs={epochs}",
        f"seed={seed}",
        f"monitor.held_out_per_class={HELD_OUT_PER_CLASS}",  # the bank: the monitor's 10,000 training images
    ]


def gains_table(records: pd.DataFrame, run_dirs: set[str]) -> tuple[pd.DataFrame, str]:
    """Per experiment and metric: both recipes' means ± CI and the paired gain, beside the paper's;
    from the pretrain records of ``run_dirs`` (this command's runs), which must share one budget."""
    rows = records[(records["stage"] == "pretrain") & records["metric"].isin(list(METRICS))]
    details = rows["details"].map(json.loads)
    rows = rows.assign(budget=rows["details"].map(recorded_budget))[
        details.map(lambda d: d.get("run_dir") in run_dirs)
    ]
    budgets = sorted(set(rows["budget"]))
    if len(budgets) != 1:
        raise AggregationError(
            f"the runs' records hold {len(budgets)} pre-training budgets ({'; '.join(budgets)}), not one"
        )
    rows = rows.sort_values("created_at", kind="stable")
    rows = rows.drop_duplicates(["method", "backbone", "recipe", "metric", "seed"], keep="last")
    paper = read_printed_gains().query("printed_in in ('Table 2', 'Table 3') and metric == 'linear_top1'")
    table = []
    for number, method, backbone in EXPERIMENTS:
        printed = paper[
            (paper["table"] == number)
            & (paper["backbone"] == backbone)
            & (paper["row"] == f"{PAPER_ROWS[method]}-ours-200")
        ]["printed_gain"]
        for metric, label in METRICS.items():
            cell = rows[
                (rows["method"] == method) & (rows["backbone"] == backbone) & (rows["metric"] == metric)
            ]
            sides = {
                recipe: dict(zip(group["seed"], group["value"], strict=True))
                for recipe, group in cell.groupby("recipe")
            }
            if set(sides) != {"baseline", "ours"}:
                continue
            seeds = sorted(set(sides["baseline"]) & set(sides["ours"]))
            if not seeds:
                continue
            gain = paired_difference(
                {s: sides["ours"][s] for s in seeds}, {s: sides["baseline"][s] for s in seeds}
            )
            table.append(
                {
                    "table": number,
                    "method": method,
                    "backbone": backbone,
                    "metric": label,
                    "baseline": summarise([sides["baseline"][s] for s in seeds]).format(),
                    "ours": summarise([sides["ours"][s] for s in seeds]).format(),
                    "gain": gain.format(signed=True),
                    "gain_excludes_zero": gain.excludes_zero(),
                    "paper_gain_linear_top1": float(printed.iloc[0]) if len(printed) else float("nan"),
                }
            )
    return pd.DataFrame(table), budgets[0]


def reproduce_gains(images: int, epochs: int, seeds: int, work_dir: Path, runs_dir: Path, out: Path) -> None:
    start, run_dirs = time.perf_counter(), set()
    for seed in range(seeds):
        for _, method, backbone in EXPERIMENTS:
            for recipe in ("baseline", "ours"):
                experiment = f"{method}_{backbone}_{recipe}"
                run_dir = work_dir / f"{experiment}-{images}x{epochs}-seed{seed}"
                run_dirs.add(str(run_dir))
                if finished_run(run_dir / "last.pth") is not None:
                    print(f"= {experiment} seed {seed}: finished run found in {run_dir}, reused", flush=True)
                    continue
                run(
                    stage_command(
                        "pretrain",
                        "--config",
                        f"pretrain/configs/tiny/{experiment}.yaml",
                        *budget_overrides(images, epochs, seed),
                        f"output_dir={run_dir}",
                        f"records_dir={runs_dir}",
                    )
                )
        elapsed = time.perf_counter() - start
        table, budget = gains_table(read_records(runs_dir), run_dirs)
        header = (
            f"# The recipe's gain at tiny scale (paper Tables 2 and 3)\n\nbudget per run: {budget}; "
            f"seeds 0-{seed} of {seeds} done after {elapsed / 60:.1f} min (this machine). Gains are paired "
            "(ours - baseline per seed), mean ± 95 % Student-t interval (n seeds); held-out: "
            f"{HELD_OUT_PER_CLASS} training images per class never pre-trained on. The paper's gain is "
            "ImageNet linear top-1 after 200 epochs: compare signs and sizes, not values.\n\n"
        )
        markdown = header + table.to_markdown(index=False, floatfmt="+.1f") + "\n"
        atomic_write_text(out / "gains_tiny.md", markdown)
        atomic_write_text(out / "gains_tiny.csv", table.to_csv(index=False))
        print(markdown, flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lowssl.results.gains", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--images", type=int, default=2000, help="pre-training images per run (default 2000)")
    parser.add_argument("--epochs", type=int, default=1, help="pre-training epochs per run (default 1)")
    parser.add_argument("--seeds", type=seed_count, default=3, help="seeds 0..N-1 (default 3)")
    parser.add_argument("--work-dir", type=Path, default=home() / "runs" / "gains-tiny")
    parser.add_argument("--runs-dir", type=Path, default=default_runs_dir())
    parser.add_argument("--out", type=Path, default=Path("results"), help="folder for gains_tiny.md and .csv")
    args = parser.parse_args(argv)
    try:
        reproduce_gains(args.images, args.epochs, args.seeds, args.work_dir, args.runs_dir, args.out)
    except subprocess.CalledProcessError as error:
        return report_failure(error)
    except AggregationError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
