"""Table 5 rendering: the paper's rows with the paper's gains, this run's rows from records, and a header
that says which is which. The golden file was written once from this code and checked by eye."""

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from lowssl.records import Record, RecordsWarning, read_records, write_records
from lowssl.results.__main__ import main
from lowssl.results.paper_tables import read_paper_tables, read_printed_gains
from lowssl.results.stats import AggregationError
from lowssl.results.table5 import render_table5

GOLDEN = Path(__file__).parent / "golden" / "table5_tiny.md"
SETTING = dict(scale="tiny", dataset="fashion-mnist", protocol="fast", hardware="2 CPU cores (test fixture)")


def run(run_id, backbone, top1, top5=None, created="2026-01-02T00:00:00+00:00", **overrides):
    common = dict(
        run_id=run_id,
        stage="linear",
        method="dino",
        recipe="ours",
        backbone=backbone,
        pretrain_epochs=2,
        dataset="fashion-mnist",
        protocol="fast",
        branch="student",
        created_at=created,
    )
    common |= overrides
    metrics = {"linear_top1": top1} | ({"linear_top5": top5} if top5 is not None else {})
    return [Record(**common, metric=metric, value=value) for metric, value in metrics.items()]


@pytest.fixture
def records(runs_dir):
    for rows in [
        run(
            "r18-random",
            "resnet18",
            81.8,
            method="random-init",
            recipe="none",
            branch="none",
            pretrain_epochs=0,
        ),
        # ResNet18 over three seeds; seed 0 of ours ran twice, its rerun replaces the first record.
        run("r18-baseline-s0", "resnet18", 83.02, 99.41, recipe="baseline", seed=0),
        run("r18-baseline-s1", "resnet18", 82.50, 99.30, recipe="baseline", seed=1),
        run("r18-baseline-s2", "resnet18", 83.40, 99.45, recipe="baseline", seed=2),
        run("r18-ours-first", "resnet18", 80.0, 99.0, created="2026-01-01T00:00:00+00:00", seed=0),
        run("r18-ours-rerun", "resnet18", 84.31, 99.52, seed=0),
        run("r18-ours-s1", "resnet18", 83.90, 99.50, seed=1),
        run("r18-ours-s2", "resnet18", 84.60, 99.61, seed=2),
        run("mnv2-baseline", "mobilenet_v2", 60.25, 95.1, recipe="baseline"),
        run("mnv2-ours", "mobilenet_v2", 63.5, 96.0),
        run(
            "mnv2-ours-teacher", "mobilenet_v2", 64.0, 96.4, branch="teacher"
        ),  # no teacher baseline: no gain
        run("r34-ours", "resnet34", 85.0, 99.6),  # no baseline: no gain
        # Not Table 5 rows of this setting: another protocol, dataset, method, metric.
        run("r18-sslight", "resnet18", 50.0, protocol="sslight_tiny"),
        run("r18-imagenet", "resnet18", 70.0, dataset="imagefolder"),
        run("r18-swav", "resnet18", 77.0, method="swav"),
        [
            Record(
                run_id="r18-knn",
                stage="knn",
                method="dino",
                recipe="ours",
                backbone="resnet18",
                pretrain_epochs=2,
                dataset="fashion-mnist",
                protocol="fast",
                branch="student",
                metric="knn_top1",
                value=82.0,
            )
        ],
    ]:
        write_records(rows, runs_dir)
    return read_records(runs_dir)


def test_rendering_from_fixed_records_matches_the_golden_markdown(records):
    markdown, _ = render_table5(read_paper_tables(), records, **SETTING)
    assert markdown == GOLDEN.read_text()


def test_paper_gains_are_recomputed_as_the_paper_prints_them(records):
    _, frame = render_table5(read_paper_tables(), records, **SETTING)
    ours = frame[(frame["source"] == "paper") & (frame["recipe"] == "ours")].set_index("pretrain_epochs")
    printed = read_printed_gains().query("table == 5 and printed_in == 'Table 5'")
    for row in printed.itertuples():
        column = f"{row.backbone}_{row.metric.removeprefix('linear_')}_gain"
        assert ours.loc[int(row.row.rsplit("-", 1)[1]), column] == pytest.approx(row.printed_gain, abs=1e-9)
    gains = ours.filter(like="_gain")
    assert gains.notna().sum().sum() == len(
        printed
    )  # no gain where the paper prints none (MobileNetV2 top-5)


def test_this_run_rows_latest_record_wins_and_gains_are_vs_this_runs_baseline(records):
    _, frame = render_table5(read_paper_tables(), records, **SETTING)
    this_run = frame[frame["source"] == "this run"]
    assert this_run[["method", "recipe", "branch"]].values.tolist() == [
        ["random-init", "none", "none"],
        ["dino", "baseline", "student"],
        ["dino", "ours", "student"],
        ["dino", "ours", "teacher"],
    ]
    ours = this_run[(this_run["recipe"] == "ours") & (this_run["branch"] == "student")].iloc[0]
    seeds_ours, seeds_baseline = [84.31, 83.90, 84.60], [83.02, 82.50, 83.40]
    assert ours["resnet18_top1"] == pytest.approx(np.mean(seeds_ours)) and ours["resnet18_top1_n"] == 3
    assert ours["resnet18_top1_ci"] == pytest.approx(stats.t.ppf(0.975, 2) * stats.sem(seeds_ours))
    differences = np.subtract(seeds_ours, seeds_baseline)  # paired by seed
    assert ours["resnet18_top1_gain"] == pytest.approx(round(differences.mean(), 2))
    assert ours["resnet18_top1_gain_ci"] == pytest.approx(stats.t.ppf(0.975, 2) * stats.sem(differences))
    assert ours["mobilenet_v2_top5_gain"] == pytest.approx(0.9) and ours["mobilenet_v2_top5_gain_n"] == 1
    assert pd.isna(ours["mobilenet_v2_top5_gain_ci"])  # one seed: no interval
    assert pd.isna(ours["resnet34_top1_gain"])
    assert ours["gain_reference"] == "this run's baseline recipe"


def test_cli_writes_markdown_and_csv(records, runs_dir, tmp_path, capsys):
    out_md, out_csv = tmp_path / "table5.md", tmp_path / "table5.csv"
    main(
        [
            "table5",
            "--scale",
            "tiny",
            "--dataset",
            "fashion-mnist",
            "--protocol",
            "fast",
            "--runs-dir",
            str(runs_dir),
            "--hardware",
            SETTING["hardware"],
            "--out-md",
            str(out_md),
            "--out-csv",
            str(out_csv),
        ]
    )
    assert out_md.read_text() == GOLDEN.read_text() == capsys.readouterr().out
    written = pd.read_csv(out_csv, keep_default_na=False)
    assert written["source"].value_counts().to_dict() == {"paper": 13, "this run": 4}


def test_without_matching_records_the_table_says_so(tmp_path):
    markdown, frame = render_table5(read_paper_tables(), read_records(tmp_path), **SETTING)
    assert "No records of this run match dataset fashion-mnist and protocol fast." in markdown
    assert (frame["source"] == "paper").all()


def test_one_cell_never_pools_budgets_and_a_gain_never_compares_two(runs_dir):
    def budget(text):
        return {"details": {"pretrain_budget": text}}

    write_records(run("a", "resnet18", 80.0, seed=0, **budget("5000 images x 1 epoch")), runs_dir)
    write_records(run("b", "resnet18", 81.0, seed=1, **budget("2500 images x 1 epoch")), runs_dir)
    with pytest.raises(AggregationError, match="different pre-training budgets .*2500 images.*5000 images"):
        render_table5(read_paper_tables(), read_records(runs_dir), **SETTING)
    (runs_dir / "b.csv").unlink()
    write_records(
        run("c", "resnet18", 79.0, seed=0, recipe="baseline", **budget("2500 images x 1 epoch")), runs_dir
    )
    with pytest.raises(AggregationError, match="gain .* different pre-training budgets: ours 5000"):
        render_table5(read_paper_tables(), read_records(runs_dir), **SETTING)


def test_a_rerun_seed_of_another_budget_never_hides_the_older_one(runs_dir):
    """Issue 28: seed 0 pre-trained on 2,500 images, then seed 0 again on 5,000 into the same folder:
    the later record silently replaced the earlier one (80.00 -> 81.00, n=1), so the cell showed
    whichever budget ran last. Now the budgets are compared before a re-run replaces a record, as the
    protocol settings are, and the error names both budgets and their runs."""
    small, large = ({"details": {"pretrain_budget": f"{n} images x 1 epoch"}} for n in (2500, 5000))
    write_records(run("a", "resnet18", 80.0, seed=0, created="2026-01-01T00:00:00+00:00", **small), runs_dir)
    write_records(run("b", "resnet18", 81.0, seed=0, created="2026-01-02T00:00:00+00:00", **large), runs_dir)
    with pytest.raises(AggregationError) as refused:
        render_table5(read_paper_tables(), read_records(runs_dir), **SETTING)
    assert str(refused.value) == (
        "records of one cell (dino, ours, 2, student, resnet18, linear_top1) come from different pre-training "
        "budgets (2500 images x 1 epoch (runs a); 5000 images x 1 epoch (runs b)), which are never pooled: keep "
        "each budget's records in its own records folder"
    )


def test_one_cell_never_pools_records_of_a_changed_preset(runs_dir):
    def protocol(**settings):
        return {"details": {"protocol": {"name": "fast", "weight_decay": 1e-4} | settings}}

    write_records(run("a", "resnet18", 80.0, seed=0, **protocol()), runs_dir)
    write_records(run("b", "resnet18", 81.0, seed=1, **protocol(weight_decay=5.0)), runs_dir)
    with pytest.raises(AggregationError, match="share a protocol name but not its settings .*weight_decay"):
        render_table5(read_paper_tables(), read_records(runs_dir), **SETTING)


def _table5_cli(runs_dir, *extra):
    return main(
        [
            "table5",
            "--scale",
            "tiny",
            "--dataset",
            "fashion-mnist",
            "--protocol",
            "fast",
            "--runs-dir",
            str(runs_dir),
            "--hardware",
            "test",
            *extra,
        ]
    )


def test_a_record_cut_inside_its_value_never_shows_as_a_number(runs_dir, capsys):
    """Issue 26, case 6: a row cut inside its value (98.6 -> "9") showed as "9.00 (n=1)" in Table 5."""
    cut = write_records(run("r18-ours", "resnet18", 98.6), runs_dir)
    text = cut.read_text()
    cut.write_text(text[: text.index("98.6") + 1])
    with pytest.warns(
        RecordsWarning, match=rf"records file {re.escape(str(cut))}, line 2 has 11 of the 18 fields"
    ):
        assert _table5_cli(runs_dir) == 0
    out = capsys.readouterr().out
    assert (
        "9.00" not in out and "No records of this run match dataset fashion-mnist and protocol fast." in out
    )


def test_formula_and_table_breaking_text_is_escaped_in_table5(runs_dir, tmp_path, capsys):
    """Issue 26, case 15: a recipe from a checkpoint is escaped in the markdown (| and newlines) and the
    CSV (a formula gets OWASP's leading quote); the numbers are unchanged."""
    recipe = "=cmd|' /C calc'!A0\nx"
    write_records(run("r18-evil", "resnet18", 84.31, recipe=recipe), runs_dir)
    out_csv = tmp_path / "table5.csv"
    assert _table5_cli(runs_dir, "--out-csv", str(out_csv)) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if line.startswith("| Source"))
    row = next(line for line in lines if "calc" in line)
    assert "DINO, =cmd\\|' /C calc'!A0 x recipe" in row and "84.31 (n=1)" in row
    assert row.replace("\\|", "").count("|") == header.count("|")
    written = pd.read_csv(out_csv, keep_default_na=False).query("source == 'this run'").iloc[0]
    assert written["recipe"] == "'" + recipe and written["resnet18_top1"] == 84.31
