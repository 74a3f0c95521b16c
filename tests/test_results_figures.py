"""make figures: every sweep point is a valid pre-training config, and plots carry the paper's optimum."""

from pathlib import Path

import pandas as pd
import pytest

from lowssl.config import load
from pretrain.config import PretrainConfig
from results.figures import BASE, OPTIMUM, TINY_BUDGET, plot, points

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
    frame = pd.DataFrame([
        {"figure": "fig3_alpha", "series": "S = 0.14", "x": a, "swept_value": a, "knn_top1_heldout": 50 + a,
         "run_dir": "r"} for a in (0.143, 0.3, 0.5)
    ] + [{"figure": "fig2_pixel_scale", "series": "S = 0.3", "x": r, "swept_value": 18, "knn_top1_heldout": 40,
          "run_dir": "r"} for r in (0.8, 1.2)])  # fmt: skip
    written = plot(frame, tmp_path, "tiny")
    assert sorted(p.name for p in written) == ["fig2_pixel_scale.csv", "fig2_pixel_scale.png",
                                               "fig3_alpha.csv", "fig3_alpha.png"]  # fmt: skip
    assert pd.read_csv(tmp_path / "fig3_alpha.csv")["knn_top1_heldout"].tolist() == [50.143, 50.3, 50.5]
    assert (tmp_path / "fig3_alpha.png").read_bytes()[:4] == b"\x89PNG"
