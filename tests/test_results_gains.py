"""make reproduce-gains: paired gains per experiment from the runs' own pretrain records, beside the
paper's printed gains; records of other runs or budgets never enter."""

import numpy as np
import pytest
from scipy import stats

from lowssl.records import Record, read_records, write_records
from lowssl.results.gains import EXPERIMENTS, gains_table
from lowssl.results.stats import AggregationError

BUDGET = "2000 fashion-mnist images x 1 epochs, batch 64"


def _pretrain(runs_dir, method, backbone, recipe, seed, value, budget=BUDGET, run_dir=None):
    run_dir = run_dir or f"runs/gains/{method}_{backbone}_{recipe}-seed{seed}"
    details = {"run_dir": run_dir, "pretrain_budget": budget}
    write_records(
        [
            Record(
                run_id=f"pretrain-{method}-{backbone}-{recipe}-seed{seed}-{abs(hash(run_dir))}",
                stage="pretrain",
                method=method,
                recipe=recipe,
                backbone=backbone,
                pretrain_epochs=1,
                dataset="fashion-mnist",
                protocol="online-knn20-heldout",
                branch="student",
                metric="knn_top1_heldout",
                value=value,
                details=details,
                seed=seed,
            )
        ],
        runs_dir,
    )
    return run_dir


def test_gains_are_paired_and_sit_beside_the_papers(runs_dir):
    ours, baseline = [75.0, 73.4, 74.1], [72.0, 70.6, 71.2]
    dirs = set()
    for seed in range(3):
        dirs.add(_pretrain(runs_dir, "dino", "resnet18", "ours", seed, ours[seed]))
        dirs.add(_pretrain(runs_dir, "dino", "resnet18", "baseline", seed, baseline[seed]))
    _pretrain(runs_dir, "dino", "resnet18", "ours", 0, 99.0, run_dir="elsewhere")  # not this command's run
    table, budget = gains_table(read_records(runs_dir), dirs)
    assert budget == BUDGET and len(table) == 1
    row = table.iloc[0]
    differences = np.subtract(ours, baseline)
    half = stats.t.ppf(0.975, 2) * stats.sem(differences)
    assert row["gain"] == f"{differences.mean():+.2f} ± {half:.2f} (n=3)" and row["gain_excludes_zero"]
    assert row["paper_gain_linear_top1"] == 3.5  # Table 3, ResNet18: 65.7 - 62.2


def test_one_budget_only(runs_dir):
    dirs = {
        _pretrain(runs_dir, "swav", "mobilenet_v2", "ours", 0, 60.0),
        _pretrain(runs_dir, "swav", "mobilenet_v2", "baseline", 0, 59.0, budget="5000 images"),
    }
    with pytest.raises(AggregationError, match="2 pre-training budgets"):
        gains_table(read_records(runs_dir), dirs)


def test_every_experiment_has_both_recipes_and_a_paper_gain():
    from pathlib import Path

    from lowssl.results.gains import PAPER_ROWS
    from lowssl.results.paper_tables import read_printed_gains

    configs = Path(__file__).resolve().parent.parent / "pretrain/configs/tiny"
    printed = read_printed_gains()
    for table, method, backbone in EXPERIMENTS:
        for recipe in ("baseline", "ours"):
            assert (configs / f"{method}_{backbone}_{recipe}.yaml").is_file()
        row = printed[
            (printed.table == table)
            & (printed.row == f"{PAPER_ROWS[method]}-ours-200")
            & (printed.backbone == backbone)
            & (printed.metric == "linear_top1")
        ]
        assert len(row) >= 1, (table, method, backbone)
