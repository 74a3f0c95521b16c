"""make figures: every sweep point is a valid pre-training config, and plots carry the paper's optimum."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from scipy import stats

from lowssl.config import load
from lowssl.pretrain.config import PretrainConfig
from lowssl.results.figures import BASE, OPTIMUM, TINY_BUDGET, plot, points

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("scale", ["tiny", "paper"])
def test_every_sweep_point_is_a_valid_config(scale):
    sweep = points(scale)
    assert {p.figure for p in sweep} == set(OPTIMUM)
    extra = list(TINY_BUDGET) if scale == "tiny" else ["data.root=/imagenet"]
    for point in sweep:
        cfg = load(PretrainConfig, REPO / BASE[scale], [*extra, *point.overrides])
        assert (cfg.method_name, cfg.backbone) == ("dino", "mobilenet_v2")
    alphas = [p.x for p in sweep if p.figure == "fig3_alpha"]
    assert 0.143 in alphas and 0.4 in alphas  # Eq. 2's 1/7 and the paper's choice


def test_plots_and_csvs_are_written(tmp_path):
    frame = pd.DataFrame(
        [
            {
                "figure": "fig3_alpha",
                "series": "S = 0.14",
                "x": a,
                "swept_value": a,
                "knn_top1_heldout": 50 + a,
                "ci95": 1.0,
                "n": 2,
                "seeds": f"{49.5 + a:.3f} {50.5 + a:.3f}",
            }
            for a in (0.143, 0.3, 0.5)
        ]
        + [
            {
                "figure": "fig2_pixel_scale",
                "series": "S = 0.3",
                "x": r,
                "swept_value": 18,
                "knn_top1_heldout": 40,
                "ci95": None,
                "n": 1,
                "seeds": "40.00",
            }
            for r in (0.8, 1.2)
        ]
    )
    written = plot(frame, tmp_path, "tiny")
    assert sorted(p.name for p in written) == [
        "fig2_pixel_scale.csv",
        "fig2_pixel_scale.png",
        "fig3_alpha.csv",
        "fig3_alpha.png",
    ]
    assert pd.read_csv(tmp_path / "fig3_alpha.csv")["knn_top1_heldout"].tolist() == [50.143, 50.3, 50.5]
    assert (tmp_path / "fig3_alpha.png").read_bytes()[:4] == b"\x89PNG"


def fake_runner(values):
    """A stand-in for run_parallel that "finishes" each run with 60 + seed (+ 0.5 at alpha 0.5)."""
    commands = []

    def run_parallel(batch, jobs):
        for command, _log in batch:
            commands.append(command)
            run_dir = next(arg.split("=", 1)[1] for arg in command if arg.startswith("output_dir="))
            seed = int(next(arg.split("=", 1)[1] for arg in command if arg.startswith("seed=")))
            values[run_dir] = 60.0 + seed + (0.5 if "alpha=0.5" in " ".join(command) else 0.0)

    return commands, run_parallel


def test_each_point_is_the_mean_over_seeds_with_its_interval(tmp_path, monkeypatch):
    import lowssl.results.figures as figures

    values = {}
    commands, run_parallel = fake_runner(values)
    monkeypatch.setattr(figures, "run_parallel", run_parallel)
    monkeypatch.setattr(figures, "finished_accuracy", lambda checkpoint: values.get(str(checkpoint.parent)))
    frame = figures.sweep("tiny", None, 8, tmp_path, ["fig3_alpha"], seeds=3)
    assert len(commands) == 5 * 3 and all("monitor.held_out_per_class=250" in c for c in commands)
    first_seed = [c for c in commands[:5]]
    assert all("seed=0" in c for c in first_seed)  # every point's seed 0 before any seed 1
    row = frame.set_index("x").loc[0.5]
    assert row["knn_top1_heldout"] == pytest.approx(61.5) and row["n"] == 3
    # the CSV rounds to 0.01 pt
    assert row["ci95"] == pytest.approx(stats.t.ppf(0.975, 2) * 1.0 / 3**0.5, abs=0.005)
    assert (
        row["run_standard_error"] == pytest.approx(100 * (0.615 * 0.385 / 2500) ** 0.5, abs=0.005)
        and row["run_standard_error"] < 1
    )


def test_points_that_are_the_same_experiment_share_one_run(tmp_path, monkeypatch):
    import lowssl.results.figures as figures

    values = {}
    commands, run_parallel = fake_runner(values)
    monkeypatch.setattr(figures, "run_parallel", run_parallel)
    monkeypatch.setattr(figures, "finished_accuracy", lambda checkpoint: values.get(str(checkpoint.parent)))
    # Fig. 2's x (the PS ratio, sampled from the crop distributions) is not what is tested here: 1 s a point
    monkeypatch.setattr(figures, "pixel_scale_ratio", lambda point, scale: float(point.x))
    frame = figures.sweep("tiny", None, 8, tmp_path, None, seeds=2)
    run_dirs = [next(a for a in c if a.startswith("output_dir=")) for c in commands]
    assert len(run_dirs) == len(set(run_dirs)) < 2 * len(frame)  # each distinct config run once a seed
    # Fig. 1's S_g = 0.14 is the baseline: Fig. 3's six local views and alpha 1/7 read the same run
    shared = frame[frame["run"] == "fig1_global_scale-S_l0.14-0.14"]
    assert set(shared["figure"]) >= {
        "fig1_global_scale",
        "fig3_local_views",
        "fig3_alpha",
        "fig2_pixel_scale",
    }
    assert frame.groupby("run")["seeds"].nunique().eq(1).all()
    # a rerun finds every run finished and runs nothing
    commands.clear()
    figures.sweep("tiny", None, 8, tmp_path, None, seeds=2)
    assert commands == []


def test_runs_side_by_side_stop_at_the_first_failure(tmp_path, capsys):
    from lowssl.results.stages import run_parallel

    ok = [sys.executable, "-c", "import os; print('threads', os.environ['OMP_NUM_THREADS'])"]
    fail = [sys.executable, "-c", "raise SystemExit(3)"]
    run_parallel([(ok, tmp_path / "a.log"), (ok, tmp_path / "b.log")], jobs=2)
    assert (tmp_path / "a.log").read_text().startswith("threads ")
    with pytest.raises(subprocess.CalledProcessError) as error:
        run_parallel([(fail, tmp_path / "c.log"), (ok, tmp_path / "d.log")], jobs=2)
    assert error.value.returncode == 3
    assert "its output is in" in capsys.readouterr().err


def test_a_figure_is_readable_at_a_glance(tmp_path):
    """Issue 27: the y-axis ran 0-100 (5-pt differences invisible, n=2 intervals cut at the frame),
    titles were file names and fig3_local_views had no mark of the paper. Now the axis fits the
    means and seeds, an interval past it ends in an arrowhead on the frame, the title says what is
    plotted, and every figure marks the paper's value."""
    import matplotlib

    matplotlib.use("Agg")
    from lowssl.results.figures import SWEPT, plot_figure, y_limits

    rows = pd.DataFrame(
        {
            "figure": "fig3_local_views",
            "series": "S = 0.14",
            "x": [2.0, 6.0, 10.0],
            "knn_top1_heldout": [36.46, 39.08, 43.48],
            "ci95": [27.7, 1.0, None],
            "n": 2,
            "seeds": ["38.64 34.28", "39.50 38.66", "43.48"],
        }
    )
    bottom, top = y_limits(rows)
    assert 30 < bottom < 34.28 and 43.48 < top < 50  # fitted to the data, with a margin
    fig = plot_figure(rows, "fig3_local_views", "tiny")
    ax = fig.axes[0]
    assert ax.get_ylim() == (bottom, top)
    edges = [line for line in ax.lines if line.get_marker() in ("^", "v") and len(line.get_xdata())]
    assert sorted((line.get_marker(), *line.get_xdata()) for line in edges) == [("^", 2.0), ("v", 2.0)]
    assert SWEPT["fig3_local_views"] in ax.get_title() and "fig3_local_views" not in ax.get_title()
    assert any("paper keeps 6" in text.get_text() for text in ax.get_legend().get_texts())
    assert all(mark.label.startswith("paper") for mark in OPTIMUM.values())


def test_replot_draws_the_figures_again_from_their_csvs(tmp_path, capsys):
    from lowssl.results.figures import main

    assert main(["--replot", "--out", str(tmp_path)]) == 2
    assert "no figure CSV in" in capsys.readouterr().err
    committed = REPO / "docs" / "figures" / "tiny" / "fig3_alpha.csv"
    (tmp_path / "fig3_alpha.csv").write_bytes(committed.read_bytes())
    assert main(["--replot", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "fig3_alpha.csv").read_bytes() == committed.read_bytes()  # the numbers as they were
    assert (tmp_path / "fig3_alpha.png").read_bytes()[:4] == b"\x89PNG"
