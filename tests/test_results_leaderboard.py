"""The leaderboard: paper rows + results records, comparable only within one dataset, protocol, metric
(and teacher branch)."""

import hashlib
import re

import pandas as pd
import pytest

from lowssl.records import Record, RecordsWarning, read_records, write_records
from lowssl.results.__main__ import main
from lowssl.results.leaderboard import COLUMNS, build_leaderboard, load_leaderboard, summarise_leaderboard
from lowssl.results.paper_tables import read_paper_tables


def paper_row(**overrides):
    row = dict(
        table=5,
        row="dino-ours-200",
        method="dino",
        recipe="ours",
        backbone="resnet18",
        teacher="",
        teacher_epochs=pd.NA,
        pretrain_epochs=200,
        protocol="paper-linear",
        metric="linear_top1",
        value=65.7,
    )
    return row | overrides


def record(run_id, **overrides):
    values = dict(
        run_id=run_id,
        stage="linear",
        method="dino",
        recipe="ours",
        backbone="resnet18",
        pretrain_epochs=2,
        dataset="fashion-mnist",
        protocol="fast",
        branch="student",
        metric="linear_top1",
        value=84.0,
    )
    return Record(**(values | overrides))


@pytest.fixture
def board(runs_dir):
    for rec in [
        record("ours"),
        record("baseline", recipe="baseline", backbone="mobilenet_v2", value=80.0),
        record("random", method="random-init", recipe="none", branch="none", pretrain_epochs=0, value=81.8),
        record("third-party", method="moco_v2", recipe="", branch="query", value=83.0),
        record("teacher", branch="teacher", value=85.0),
        record("sslight", protocol="sslight_tiny", value=70.0),
        record(
            "lookalike", protocol="paper-linear", value=90.0
        ),  # same protocol name as the paper, other dataset
    ]:
        write_records([rec], runs_dir)
    paper = pd.DataFrame(
        [
            paper_row(),
            paper_row(
                row="bingo-moco_v2_resnet152",
                method="bingo",
                recipe="",
                teacher="moco_v2_resnet152",
                teacher_epochs=400,
                protocol="bingo-linear",
                value=65.9,
            ),
            paper_row(
                table=3,
                row="backbone",
                method="",
                recipe="",
                pretrain_epochs=pd.NA,
                protocol="",
                metric="params_M",
                value=11.2,
            ),
        ]
    )
    return build_leaderboard(paper, read_records(runs_dir)).set_index("origin")


def test_same_dataset_protocol_and_metric_share_a_group_across_methods_recipes_backbones(board):
    group = board.loc["ours", "comparable_group"]
    assert group == "fashion-mnist|fast|linear_top1"
    assert (board.loc[["baseline", "random", "third-party"], "comparable_group"] == group).all()


def test_paper_imagenet_rows_are_never_comparable_with_fashion_mnist_runs(board):
    paper_groups = set(board.loc[board["source"] == "paper", "comparable_group"])
    run_groups = set(board.loc[board["source"] == "lowssl-run", "comparable_group"])
    assert not paper_groups & run_groups
    assert board.loc["lookalike", "comparable_group"] == "fashion-mnist|paper-linear|linear_top1"


def test_a_different_protocol_or_a_teacher_branch_is_another_group(board):
    assert board.loc["sslight", "comparable_group"] != board.loc["ours", "comparable_group"]
    assert board.loc["teacher", "comparable_group"] == "fashion-mnist|fast|linear_top1|teacher"
    table5 = board.loc["Table 5"].set_index("method")["comparable_group"]
    assert table5["dino"] != table5["bingo"]  # each distillation paper quotes its own protocol


def test_paper_rows_get_their_dataset_from_the_metric(board):
    assert board.loc["Table 5", "dataset"].tolist() == ["imagenet-1k", "imagenet-1k"]
    assert board.loc["Table 3", ["dataset", "protocol", "comparable_group"]].tolist() == [
        "",
        "",
        "-|-|params_M",
    ]


def test_the_real_tables_alone_make_a_leaderboard(tmp_path):
    frame = load_leaderboard(tmp_path)
    assert list(frame.columns) == COLUMNS
    assert len(frame) == len(read_paper_tables()) and (frame["source"] == "paper").all()
    assert set(frame["dataset"]) == {"imagenet-1k", "coco-2017", ""}


def test_cli_filters_prints_and_writes_csv(runs_dir, tmp_path, capsys):
    write_records([record("ours")], runs_dir)
    write_records([record("r34", backbone="resnet34")], runs_dir)
    out = tmp_path / "leaderboard.csv"
    main(
        [
            "leaderboard",
            "--flat",
            "--runs-dir",
            str(runs_dir),
            "--backbone",
            "resnet18",
            "--metric",
            "linear_top1",
            "--dataset",
            "fashion-mnist",
            "imagenet-1k",
            "--out",
            str(out),
        ]
    )
    written = pd.read_csv(out, keep_default_na=False)
    assert set(written["backbone"]) == {"resnet18"} and set(written["metric"]) == {"linear_top1"}
    assert written["origin"].tolist()[0] == "ours"  # fashion-mnist group sorts first
    assert (written["source"] == "paper").sum() == len(written) - 1
    assert "| fashion-mnist |" in capsys.readouterr().out


def test_default_view_answers_how_x_compares_per_metric_and_backbone(runs_dir, capsys):
    """ResNet18 linear top-1: our three seeds as one row with mean ± CI and n, the KD baselines as
    the paper prints them, architecture rows left out, and a group legend saying what compares."""
    for seed, value in enumerate([84.0, 85.0, 86.0]):
        write_records([record(f"ours-s{seed}", seed=seed, value=value)], runs_dir)
    write_records([record("r34", backbone="resnet34")], runs_dir)
    main(
        [
            "leaderboard",
            "--runs-dir",
            str(runs_dir),
            "--backbone",
            "resnet18",
            "--metric",
            "linear_top1",
            "params_M",
        ]
    )
    out = capsys.readouterr().out
    assert re.search(r"\| 85\.00 ± 2\.48 \|\s+3 \|", out)  # t(0.975, 2) * sd 1 / sqrt(3) = 2.48
    assert re.search(r"\| bingo .*\| 65\.9 ", out)  # the paper's KD rows, as printed
    assert "params_M" not in out
    assert "G1: fashion-mnist, fast, linear_top1" in out and "imagenet-1k, bingo-linear, linear_top1" in out


def settings(**protocol):
    return {"details": {"protocol": {"name": "sslight_tiny", "seed": 0, "epochs": 40} | protocol}}


def test_a_protocol_name_whose_settings_changed_between_runs_is_never_pooled(runs_dir, capsys):
    """Seeds 0 and 1 under the preset as it was, seed 1 again after it changed: the re-run must not
    be averaged with, nor hidden behind, the older records; the error names the fields and the fix."""
    write_records([record("s0", seed=0, protocol="sslight_tiny", **settings(seed=0))], runs_dir)
    write_records([record("s1", seed=1, protocol="sslight_tiny", **settings(seed=1))], runs_dir)
    with_notes = settings(seed=2, note="same settings, other words")
    write_records([record("s2", seed=2, protocol="sslight_tiny", **with_notes)], runs_dir)
    main(["leaderboard", "--runs-dir", str(runs_dir)])  # other seeds and notes pool
    assert re.search(r"\|\s+3 \| sslight_tiny", capsys.readouterr().out)

    changed = settings(seed=1, epochs=100, train_input="features")
    write_records([record("s1-rerun", seed=1, protocol="sslight_tiny", **changed)], runs_dir)
    assert main(["leaderboard", "--runs-dir", str(runs_dir)]) == 2
    error = capsys.readouterr().err
    assert 'epochs: 40 vs 100; train_input: null vs "features"' in error
    assert "re-run the older records under the current preset" in error
    assert main(["leaderboard", "--runs-dir", str(runs_dir), "--flat"]) == 0  # the flat dump still lists them


def test_a_record_cut_inside_its_value_never_shows_as_a_number(runs_dir, capsys):
    """Issue 26, case 6: a row cut inside its value (98.6 -> "9") showed as 9.00 (n=1), here pooled
    with a whole seed as 46.50 (n=2); now the row is skipped and the warning names its file and line."""
    write_records([record("whole", seed=0, value=84.0)], runs_dir)
    cut = write_records([record("cut", seed=1, value=98.6)], runs_dir)
    text = cut.read_text()
    cut.write_text(text[: text.index("98.6") + 1])
    with pytest.warns(
        RecordsWarning, match=rf"records file {re.escape(str(cut))}, line 2 has 11 of the 18 fields"
    ):
        assert main(["leaderboard", "--runs-dir", str(runs_dir), "--dataset", "fashion-mnist"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"\|\s+84\.00 \|\s+1 \|", out) and "9.00" not in out and "46.50" not in out


def test_a_damaged_records_folder_still_gives_the_leaderboard(runs_dir, capsys):
    """Issue 26, case 13: a row cut inside its quoted JSON and a foreign CSV stopped the command with a
    pandas ParserError; now each is named and skipped, and the whole records are ranked."""
    write_records([record("whole", value=84.0)], runs_dir)
    damaged = write_records([record("json-cut", value=70.0, details={"a": 1, "b": 2})], runs_dir)
    damaged.write_text(damaged.read_text()[:-80])  # cut inside the details JSON
    (runs_dir / "foreign.csv").write_text("a,b\n1,2\n")
    with pytest.warns(RecordsWarning) as caught:
        assert main(["leaderboard", "--runs-dir", str(runs_dir), "--dataset", "fashion-mnist"]) == 0
    assert [str(w.message) for w in caught] == [
        f"records file {runs_dir / 'foreign.csv'} lacks the columns run_id, stage, method ...: it is not a "
        "lowssl records file: skipped it",
        f"records file {damaged}, line 2: unexpected end of data, so the row is cut or damaged: skipped it",
    ]
    assert re.search(r"\|\s+84\.00 \|\s+1 \|", capsys.readouterr().out)


def test_formula_and_table_breaking_text_is_escaped_in_the_leaderboard(runs_dir, tmp_path, capsys):
    """Issue 26, case 15: a method or recipe from a checkpoint went verbatim into leaderboard.csv (run
    as a formula by a spreadsheet) and its "|" split the markdown row; numbers stay numbers."""
    method, recipe = "=cmd|' /C calc'!A0", '=HYPERLINK("http://evil.example","x")\nnext line'
    write_records([record("evil", method=method, recipe=recipe, value=-1.5)], runs_dir)
    out = tmp_path / "leaderboard.csv"
    main(
        [
            "leaderboard",
            "--flat",
            "--runs-dir",
            str(runs_dir),
            "--dataset",
            "fashion-mnist",
            "--out",
            str(out),
        ]
    )
    header, _, row = capsys.readouterr().out.splitlines()
    assert row.replace("\\|", "").count("|") == header.count("|")  # the row has the header's cells
    assert "=cmd\\|' /C calc'!A0" in row and "next line" in row
    written = pd.read_csv(out, keep_default_na=False).iloc[0]
    assert written["method"] == "'" + method and written["recipe"] == "'" + recipe
    assert written["value"] == -1.5 and out.read_text().count(",-1.5,") == 1


def test_an_unknown_filter_value_is_an_error_with_the_values_present(runs_dir, capsys):
    """Before: ``--metric linear_acc`` printed an empty table and exit 0. Now one line, exit 2, the
    closest metric and every metric present."""
    write_records([record("ours")], runs_dir)
    assert main(["leaderboard", "--runs-dir", str(runs_dir), "--metric", "linear_acc"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith("error: no row has metric 'linear_acc': did you mean 'linear_top")
    assert "the metric values present are" in line and "semi_1pct_top1" in line
    for flag, typo in (("--backbone", "resnet-18"), ("--protocol", "fast_tny"), ("--dataset", "fmnist")):
        assert main(["leaderboard", "--runs-dir", str(runs_dir), flag, typo]) == 2
        assert f"no row has {flag[2:]} {typo!r}" in capsys.readouterr().err


def test_a_dataset_keeps_its_subset_tagged_rows(runs_dir, capsys):
    """Before: ``--dataset fashion-mnist`` hid the rows of a run on a subset (tagged
    ``fashion-mnist/train3000/eval2000``)."""
    write_records([record("whole", value=84.0)], runs_dir)
    write_records([record("subset", dataset="fashion-mnist/train3000/eval2000", value=71.0)], runs_dir)
    argv = ["leaderboard", "--runs-dir", str(runs_dir), "--flat", "--dataset"]
    assert main([*argv, "fashion-mnist"]) == 0
    out = capsys.readouterr().out
    assert "| fashion-mnist/train3000/eval2000 |" in out and "| fashion-mnist " in out
    assert main([*argv, "fashion-mnist/train3000/eval2000"]) == 0
    out = capsys.readouterr().out
    assert "| whole " not in out and "| subset " in out, "a tagged name keeps only its own rows"


@pytest.mark.parametrize(
    ("stage", "metric", "dataset"),
    [("semisup", "semi_1pct_top1", "fashion-mnist"), ("detection", "coco_tiny_APbb", "fmnist_det_val")],
)
def test_records_of_two_pretraining_budgets_are_never_pooled_at_any_stage(
    runs_dir, capsys, stage, metric, dataset
):
    """Issue 28: only pretrain and evaluate records carried pretrain_budget and nothing compared it, so a
    1,500-image and a 3,000-image pre-training pooled into one mean over seeds; now each budget is its own
    row with its own seeds, and records without a budget (before it was recorded) one more."""

    def at(run_id, seed, budget):
        details = {} if budget is None else {"details": {"pretrain_budget": budget}}
        return [
            record(
                run_id, stage=stage, metric=metric, dataset=dataset, seed=seed, value=60.0 + seed, **details
            )
        ]

    small, large = (
        "1500 fashion-mnist images x 1 epochs, batch 64",
        "3000 fashion-mnist images x 1 epochs, batch 64",
    )
    write_records(at("s0", 0, small), runs_dir)
    write_records(at("s1", 1, small), runs_dir)
    assert main(["leaderboard", "--runs-dir", str(runs_dir)]) == 0  # one budget: its seeds pool
    assert re.search(rf"\| 60\.50 ± \S+ \|\s+2 \| fast\s+\| {dataset}", capsys.readouterr().out)

    write_records(at("l2", 2, large), runs_dir)
    write_records(at("old", 3, None), runs_dir)
    summary = summarise_leaderboard(load_leaderboard(runs_dir))
    rows = summary[summary["source"] == "lowssl-run"].set_index("pretrain_budget")
    # each budget its own row, its own seeds: 60.50 (n=2), 62.00 (n=1), 63.00 (n=1, unrecorded)
    assert rows.loc[small, "n"] == 2 and rows.loc[large, "n"] == 1 and rows.loc["", "n"] == 1
    assert rows.loc[large, "value"] == "62.00" and rows.loc["", "value"] == "63.00"


def test_beside_a_checkpoint_its_rows_and_only_the_comparable_rows_of_its_backbone(
    runs_dir, tmp_path, capsys
):
    """Issue 27: make evaluate-checkpoint ended with the whole leaderboard (282 rows), burying the
    checkpoint's own numbers. Now: its rows, marked, beside the rows of its backbone in the same
    comparable group only (never pooled with them), a header saying so, and the whole leaderboard
    in --out."""
    checkpoint = tmp_path / "last.pth"
    checkpoint.write_bytes(b"weights")
    sha256 = hashlib.sha256(b"weights").hexdigest()
    write_records([record("mine", checkpoint_sha256=sha256, seed=0, value=70.0)], runs_dir)
    write_records([record("other-seed0", checkpoint_sha256="b" * 64, seed=0, value=75.0)], runs_dir)
    write_records([record("other-seed1", checkpoint_sha256="c" * 64, seed=1, value=77.0)], runs_dir)
    write_records([record("mnv2", backbone="mobilenet_v2", checkpoint_sha256="d" * 64)], runs_dir)
    write_records([record("other-protocol", protocol="sslight_tiny", checkpoint_sha256="e" * 64)], runs_dir)
    out = tmp_path / "leaderboard.csv"
    argv = ["leaderboard", "--runs-dir", str(runs_dir), "--out", str(out), "--checkpoint"]
    assert main([*argv, str(checkpoint)]) == 0
    printed = capsys.readouterr().out
    header, paper, whole = printed.splitlines()[:3]
    assert header.startswith(
        f"Checkpoint {checkpoint} (resnet18, sha256 {sha256[:12]}): its 1 number, beside 2 numbers of resnet18"
    )
    assert "No number of the paper is comparable" in paper and f"written to {out}" in whole
    assert re.search(r"\| this checkpoint \| .*\| 70\.00\s+\|\s+1 \| mine\s+\|", printed)
    assert re.search(r"\| lowssl-run +\| .*\| 76\.00 ± \S+ \|\s+2 \| other-seed1, other-seed0 \|", printed)
    assert "mnv2" not in printed and "other-protocol" not in printed and "Table" not in printed
    assert "G1: fashion-mnist, fast, linear_top1" in printed and "G2" not in printed
    written = pd.read_csv(out, keep_default_na=False)
    assert {"mnv2", "other-protocol", "Table 5"} <= {o for row in written["origin"] for o in row.split(", ")}
    assert main([*argv, sha256[:8]]) == 0 and capsys.readouterr().out == printed.replace(
        f"Checkpoint {checkpoint} ", f"Checkpoint {sha256[:8]} "
    )


def test_a_checkpoint_without_rows_is_one_line_naming_the_fix(runs_dir, tmp_path, capsys):
    write_records([record("ours", checkpoint_sha256="b" * 64)], runs_dir)
    for checkpoint, message in (
        ("a" * 12, f"error: no record comes from checkpoint {'a' * 12}: evaluate it first"),
        (str(tmp_path / "missing.pth"), "nor a SHA-256 (8 to 64 hex digits)"),
    ):
        assert main(["leaderboard", "--runs-dir", str(runs_dir), "--checkpoint", checkpoint]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and len(captured.err.splitlines()) == 1 and message in captured.err


def test_every_row_says_where_it_comes_from(runs_dir, capsys):
    """Issue 27: rows did not say which checkpoint or run they come from. The default view names the
    paper's table or each pooled run; the flat view each run's checkpoint too."""
    write_records([record("ours", checkpoint_sha256="f" * 64)], runs_dir)
    assert main(["leaderboard", "--runs-dir", str(runs_dir), "--backbone", "resnet18"]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"\| fast\s+\| fashion-mnist\s+\|\s+\| ours\s+\|", printed)
    assert re.search(r"\| Table 5\s+\|", printed)
    assert main(["leaderboard", "--runs-dir", str(runs_dir), "--flat", "--dataset", "fashion-mnist"]) == 0
    assert re.search(r"\| ours\s+\| ffffffffffff\s+\|", capsys.readouterr().out)
