"""``make figures``: the paper's view-sampling sweeps (Figs. 1-3), run and plotted.

Every point is ``--seeds`` pre-training runs (default 2) of DINO on MobileNetV2 (the paper's setting,
Sec. 3.2 "Setting") with one value changed, scored by each run's held-out monitor: weighted 20-NN
accuracy on images held out from the training set (the paper reports a linear probe on a held-out
split; the monitor is the cheaper signal the authors also track). At tiny scale the held-out split is
:data:`TINY_HELD_OUT_PER_CLASS` images per class (2,500), so that one run's standard error,
sqrt(p (1 - p) / 2500), is below 1 pt; the paper's 50 per class would give about 2 pt, more than the
effects the figures show. A point is the mean over seeds with its 95 % Student-t interval as an error
bar (results/stats.py), each seed's value a dot beside it. Each figure writes ``<name>.csv`` (the
numbers behind the plot: mean, interval, n, one run's standard error, the seeds' values and the run
that made them) and ``<name>.png`` with the paper's reported optimum marked, the y-axis fitted to the
data; ``--replot`` draws the PNGs again from the CSVs (docs/figures/tiny/ are such outputs).

- ``fig1_global_scale``: S_g at S_l = 0.14 (Fig. 1 left; paper optimum S_g in [0.3, 0.4]);
- ``fig1_local_scale``: S_l at S_g = 0.3 (Fig. 1 right; optimum S_l in [0.3, 0.4]);
- ``fig2_pixel_scale``: LC at S = 0.14 and S = 0.3, plotted against mean(PS_g / PS_l) (Fig. 2;
  optimum at a ratio of 1.0, Sec. 3.2.2);
- ``fig3_local_views``: number of local views (Fig. 3 left; more help only marginally: the paper keeps
  the method's 6, marked);
- ``fig3_alpha``: alpha (Fig. 3 right; optimum in [0.3, 0.4]; 1/7 is Eq. 2).

``--scale tiny`` (default) runs the tiny preset with a small budget on Fashion-MNIST (sizes scaled by
32/224); ``--scale paper --imagenet DIR`` runs the paper's 200-epoch config through torchrun.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from lowssl.config import config_hash, from_dict, load
from lowssl.data import usable_cpus
from lowssl.io import atomic_write_text
from lowssl.paths import home
from lowssl.pretrain.config import PretrainConfig
from lowssl.pretrain.views import ViewsConfig, pixel_scale_stats
from lowssl.results.commands import python_module, stage_command, torchrun
from lowssl.results.reproduce import seed_count
from lowssl.results.stages import finished_run, report_failure, run_parallel
from lowssl.results.stats import summarise

BASE = {
    "tiny": "pretrain/configs/tiny/dino_mobilenet_v2_baseline.yaml",
    "paper": "pretrain/configs/dino_mobilenet_v2_baseline.yaml",
}
GLOBAL_SIZE = {"tiny": 32, "paper": 224}
TINY_HELD_OUT_PER_CLASS = 250
# 1,500 images x 1 epoch (23 steps of 64), Table 5's tiny budget (results/reproduce.py TINY_IMAGES):
# the 30 distinct runs x 2 seeds of the sweeps fit in an hour on 2 cores, two runs side by side with
# one loading process each.
TINY_BUDGET = (
    "data.subset=1500",
    "data.num_workers=1",
    "epochs=1",
    "monitor.knn_bank_size=2000",
    f"monitor.held_out_per_class={TINY_HELD_OUT_PER_CLASS}",
)
HELD_OUT_IMAGES = {"tiny": 10 * TINY_HELD_OUT_PER_CLASS, "paper": 1000 * 50}  # 10 / 1000 classes


@dataclass(frozen=True)
class Point:
    figure: str
    series: str
    x: float  # the swept value (for Fig. 2: LC; its PS ratio is computed)
    overrides: tuple[str, ...]


def _size(scale: str, pixels_at_224: int) -> int:
    return max(1, round(pixels_at_224 * GLOBAL_SIZE[scale] / 224))


def points(scale: str) -> list[Point]:
    """The sweeps, each point as overrides of the DINO MobileNetV2 baseline config."""
    local_96 = _size(scale, 96)
    sweeps = [
        Point("fig1_global_scale", "S_l = 0.14", s, (f"views.global_scale=[{s},1.0]",))
        for s in (0.08, 0.14, 0.2, 0.3, 0.4, 0.6)
    ]
    sweeps += [
        Point(
            "fig1_local_scale",
            "S_g = 0.3",
            s,
            ("views.global_scale=[0.3,1.0]", f"views.local_scale=[0.05,{s}]", f"views.local_size={local_96}"),
        )
        for s in (0.1, 0.14, 0.2, 0.3, 0.4)
    ]
    for s in (0.14, 0.3):
        sweeps += [
            Point(
                "fig2_pixel_scale",
                f"S = {s}",
                _size(scale, lc),
                (
                    f"views.global_scale=[{s},1.0]",
                    f"views.local_scale=[0.05,{s}]",
                    f"views.local_size={_size(scale, lc)}",
                ),
            )
            for lc in (64, 80, 96, 112, 128, 144, 160)
        ]
    sweeps += [Point("fig3_local_views", "S = 0.14", n, (f"views.n_local={n}",)) for n in (2, 4, 6, 8, 10)]
    # alpha = 1/7 (0.143) is Eq. 2's equal weighting of every pair: the baseline's own (method.alpha: null)
    sweeps += [Point("fig3_alpha", "S = 0.14", round(1 / 7, 3), ())]
    sweeps += [Point("fig3_alpha", "S = 0.14", a, (f"method.alpha={a}",)) for a in (0.2, 0.3, 0.4, 0.5)]
    return sweeps


@dataclass(frozen=True)
class PaperMark:
    """The paper's value for a sweep: a range to shade, or (low == high) the x of a vertical line."""

    low: float
    high: float
    label: str


# The paper's reported optimum per figure; for the local views, which it finds to help only
# marginally beyond the method's default (Sec. 3.2.3), the default it keeps (docs/recipes.md).
OPTIMUM = {
    "fig1_global_scale": PaperMark(0.3, 0.4, "paper's best S_g: 0.3-0.4 (Sec. 3.2.1)"),
    "fig1_local_scale": PaperMark(0.3, 0.4, "paper's best S_l: 0.3-0.4 (Sec. 3.2.1)"),
    "fig2_pixel_scale": PaperMark(1.0, 1.0, "paper's optimum: ratio 1 (Sec. 3.2.2)"),
    "fig3_local_views": PaperMark(6, 6, "paper keeps 6: more help only marginally (Sec. 3.2.3)"),
    "fig3_alpha": PaperMark(0.3, 0.4, "paper's best alpha: 0.3-0.4 (Sec. 3.2.4)"),
}
#: What each figure sweeps, for its title.
SWEPT = {
    "fig1_global_scale": "global crop scale S_g (Fig. 1, left)",
    "fig1_local_scale": "local crop scale S_l (Fig. 1, right)",
    "fig2_pixel_scale": "pixel scale ratio of global to local views (Fig. 2)",
    "fig3_local_views": "number of local views (Fig. 3, left)",
    "fig3_alpha": "weight alpha of the global-global loss (Fig. 3, right)",
}
X_LABEL = {
    "fig1_global_scale": "S_g (global scale lower bound)",
    "fig1_local_scale": "S_l (local scale upper bound)",
    "fig2_pixel_scale": "mean(PS_g / PS_l)",
    "fig3_local_views": "number of local views",
    "fig3_alpha": "alpha (weight of the global-global loss)",
}
SCALE_DATA = {"tiny": "Fashion-MNIST, tiny scale", "paper": "ImageNet-1k"}


def run_name(point: Point) -> str:
    return f"{point.figure}-{point.series.replace(' ', '').replace('=', '')}-{point.x:g}"


def finished_accuracy(checkpoint: Path) -> float | None:
    """The held-out monitor of a finished run; None if the run is missing or unfinished."""
    state = finished_run(checkpoint)
    return None if state is None else state["metrics"].get("knn_top1_heldout")


def pixel_scale_ratio(point: Point, scale: str) -> float:
    values = dict(o.split("=", 1) for o in point.overrides)
    cfg = from_dict(
        ViewsConfig,
        {
            "global_scale": [float(v) for v in values["views.global_scale"].strip("[]").split(",")],
            "local_scale": [float(v) for v in values["views.local_scale"].strip("[]").split(",")],
            "global_size": GLOBAL_SIZE[scale],
            "local_size": int(values["views.local_size"]),
            "n_local": 6,
        },
    )
    return pixel_scale_stats(cfg).mean_ps_ratio


def sweep(
    scale: str,
    imagenet: str | None,
    gpus: int,
    work_dir: Path,
    only: list[str] | None,
    seeds: int = 2,
    jobs: int = 1,
) -> pd.DataFrame:
    launcher = python_module() if scale == "tiny" else torchrun(gpus)
    extra = TINY_BUDGET if scale == "tiny" else (f"data.root={imagenet}",)
    selected = [point for point in points(scale) if not only or point.figure in only]
    # Points of different figures can be the same experiment (Fig. 1's S_g = 0.14 is Fig. 3's six
    # local views and Fig. 2's LC = 96 at S = 0.14): one run per distinct resolved config, named
    # after its first point, serves them all.
    run_of: dict[Point, str] = {}
    overrides: dict[str, tuple[str, ...]] = {}  # run name -> its first point's overrides, sweep order
    name_of_config: dict[str, str] = {}
    for point in selected:
        key = config_hash(load(PretrainConfig, BASE[scale], [*extra, *point.overrides]))
        run_of[point] = name_of_config.setdefault(key, run_name(point))
        overrides.setdefault(run_of[point], point.overrides)
    run_dirs = {(name, seed): work_dir / f"{name}-seed{seed}" for seed in range(seeds) for name in overrides}
    accuracy = {key: finished_accuracy(run_dir / "last.pth") for key, run_dir in run_dirs.items()}
    pending = [key for key, value in accuracy.items() if value is None]  # every run's seed 0 first
    commands = [
        (
            stage_command(
                "pretrain",
                "--config",
                BASE[scale],
                *extra,
                *overrides[name],
                f"seed={seed}",
                f"output_dir={run_dirs[name, seed]}",
                f"records_dir={work_dir / 'records'}",
                launcher=launcher,
            ),
            work_dir / "logs" / f"{run_dirs[name, seed].name}.log",
        )
        for name, seed in pending
    ]
    print(
        f"{len(selected)} points, {len(run_dirs)} runs ({len(overrides)} distinct configs x {seeds} seeds): "
        f"{len(run_dirs) - len(pending)} finished already, {len(pending)} to run, {jobs} at a time",
        flush=True,
    )
    run_parallel(commands, jobs)
    accuracy.update({key: finished_accuracy(run_dirs[key] / "last.pth") for key in pending})
    values = {point: [accuracy[run_of[point], seed] for seed in range(seeds)] for point in selected}
    rows = []
    for point, accuracies in values.items():
        summary = summarise(accuracies)
        mean = summary.mean / 100
        x = pixel_scale_ratio(point, scale) if point.figure == "fig2_pixel_scale" else point.x
        rows.append(
            {
                "figure": point.figure,
                "series": point.series,
                "x": round(x, 4),
                "swept_value": point.x,
                "knn_top1_heldout": round(summary.mean, 2),
                "ci95": None if summary.half_width is None else round(summary.half_width, 2),
                "n": summary.n,
                "run_standard_error": round(100 * math.sqrt(mean * (1 - mean) / HELD_OUT_IMAGES[scale]), 2),
                "seeds": " ".join(f"{a:.2f}" for a in accuracies),
                "run": run_of[point],
            }
        )
    return pd.DataFrame(rows)


def seed_values(rows: pd.DataFrame) -> list[tuple[float, float]]:
    """(x, one seed's value) for every seed of every point."""
    return [
        (x, float(v)) for x, text in zip(rows["x"], rows["seeds"], strict=True) for v in str(text).split()
    ]


def y_limits(rows: pd.DataFrame) -> tuple[float, float]:
    """The y-axis fitted to the means and every seed's value, with a margin, within 0-100. It is not
    stretched to the intervals: with two seeds a 95 % interval is about 9 sample deviations wide
    (t = 12.7) and would bring back an axis on which the effects cannot be seen; an interval that
    reaches past the axis is marked at its edge instead (:func:`mark_beyond`)."""
    values = [*rows["knn_top1_heldout"], *(v for _, v in seed_values(rows))]
    low, high = min(values), max(values)
    margin = max(0.15 * (high - low), 1.0)
    return max(low - margin, 0.0), min(high + margin, 100.0)


def mark_beyond(ax, points_: pd.DataFrame, limits: tuple[float, float], color) -> bool:
    """An arrowhead on the frame where a point's interval runs past the axis, so that none is cut off
    unseen (the CSV has its half-width); whether any was marked."""
    bottom, top = limits
    ci = points_["ci95"].fillna(0)
    above = points_["knn_top1_heldout"] + ci > top
    below = points_["knn_top1_heldout"] - ci < bottom
    for edge, beyond, marker in ((top, above, "^"), (bottom, below, "v")):
        xs = points_.loc[beyond, "x"]
        ax.plot(
            xs, [edge] * len(xs), linestyle="", marker=marker, color=color, alpha=0.6, clip_on=False, zorder=4
        )
    return bool((above | below).any())


def mark_paper(ax, mark: PaperMark) -> None:
    if mark.low == mark.high:
        ax.axvline(mark.low, color="purple", linestyle="--", label=mark.label)
    else:
        ax.axvspan(mark.low, mark.high, color="purple", alpha=0.15, label=mark.label)


def plot_figure(rows: pd.DataFrame, figure: str, scale: str):
    """One sweep: per series the mean over seeds with its 95 % interval and each seed as a dot, the
    paper's value marked, the y-axis fitted to the data (:func:`y_limits`), the legend under the axes."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.6))
    limits = y_limits(rows)
    widest, beyond = rows["ci95"].max(), False
    for series, points_ in rows.groupby("series", sort=False):
        points_ = points_.sort_values("x")
        # the means drawn boldly, the intervals (wide with two seeds) faintly behind them
        (line,) = ax.plot(
            points_["x"],
            points_["knn_top1_heldout"],
            marker="o",
            label=f"{series}: mean over seeds, 95 % interval",
        )
        color = line.get_color()
        yerr = points_["ci95"].fillna(0)
        ax.errorbar(
            points_["x"],
            points_["knn_top1_heldout"],
            yerr=yerr,
            fmt="none",
            ecolor=color,
            alpha=0.35,
            capsize=3,
        )
        seeds = seed_values(points_)
        ax.scatter([x for x, _ in seeds], [v for _, v in seeds], s=10, color=color, alpha=0.5, zorder=3)
        beyond |= mark_beyond(ax, points_, limits, color)
    mark_paper(ax, OPTIMUM[figure])
    if beyond:  # a legend entry for the arrowheads, in grey: they take their series' colour
        ax.plot(
            [],
            [],
            linestyle="",
            marker="^",
            color="grey",
            label=f"interval runs past the axis (widest ±{widest:.0f})",
        )
    ax.scatter([], [], s=10, color="grey", alpha=0.5, label="one seed")
    ax.set_ylim(*limits)
    ax.set_xlabel(X_LABEL[figure])
    ax.set_ylabel("held-out 20-NN top-1 (%)")
    seeds_per_point = "-".join(str(n) for n in sorted({rows["n"].min(), rows["n"].max()}))
    ax.set_title(
        f"Held-out k-NN top-1 vs {SWEPT[figure]}\nDINO MobileNetV2, {SCALE_DATA[scale]}, "
        f"{seeds_per_point} seeds a point",
        fontsize=9,
    )
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    return fig


def plot(frame: pd.DataFrame, out: Path, scale: str) -> list[Path]:
    """``<figure>.csv`` and ``<figure>.png`` in ``out`` for every figure of ``frame``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for figure, rows in frame.groupby("figure", sort=False):
        fig = plot_figure(rows, figure, scale)
        csv_path, png_path = out / f"{figure}.csv", out / f"{figure}.png"
        atomic_write_text(csv_path, rows.to_csv(index=False))
        fig.savefig(png_path, dpi=120, bbox_inches="tight")
        plt.close(fig)
        written += [csv_path, png_path]
    return written


def replot(out: Path, figures: list[str], scale: str) -> int:
    """Plot the figures again from the CSVs a sweep wrote into ``out`` (the numbers stay as they are)."""
    found = [out / f"{figure}.csv" for figure in figures if (out / f"{figure}.csv").is_file()]
    if not found:
        print(
            f"error: no figure CSV in {out} (expected {figures[0]}.csv ...): run the sweep first",
            file=sys.stderr,
        )
        return 2
    for path in plot(pd.concat([pd.read_csv(path) for path in found], ignore_index=True), out, scale):
        print(f"wrote {path}")
    return 0


def job_count(text: str) -> int:
    count = int(text)
    if count < 1:
        raise argparse.ArgumentTypeError(f"--jobs {count}: at least 1 run at a time")
    return count


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lowssl.results.figures", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--scale", choices=["tiny", "paper"], default="tiny")
    parser.add_argument("--imagenet", help="ImageNet folder (paper scale)")
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--only", nargs="+", choices=list(OPTIMUM), help="run only these figures")
    parser.add_argument("--seeds", type=seed_count, default=2, help="seeds per point (default 2)")
    parser.add_argument(
        "--jobs",
        type=job_count,
        help="runs side by side (default: one per usable CPU core at tiny scale, 1 at paper scale)",
    )
    parser.add_argument("--work-dir", type=Path, help="default runs/figures-<scale>")
    parser.add_argument("--out", type=Path, help="default results/figures/<scale>")
    parser.add_argument(
        "--replot",
        action="store_true",
        help="run nothing: plot again the <figure>.csv files already in --out (e.g. docs/figures/tiny)",
    )
    args = parser.parse_args(argv)
    if args.replot:
        return replot(
            args.out or Path("results/figures") / args.scale, args.only or list(OPTIMUM), args.scale
        )
    if args.scale == "paper" and not args.imagenet:
        parser.error("--scale paper needs --imagenet /path/to/imagenet")
    out = args.out or Path("results/figures") / args.scale
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        frame = sweep(
            args.scale,
            args.imagenet,
            args.gpus,
            args.work_dir or home() / "runs" / f"figures-{args.scale}",
            args.only,
            args.seeds,
            args.jobs or (usable_cpus() if args.scale == "tiny" else 1),
        )
    except subprocess.CalledProcessError as error:
        return report_failure(error)
    for path in plot(frame, out, args.scale):
        print(f"wrote {path}")
    print(
        f"{len(frame)} points x {args.seeds} seeds in {(time.perf_counter() - start) / 60:.1f} min; one run's "
        f"standard error on the held-out set: at most {frame['run_standard_error'].max():.2f} pt"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
