"""results/paper/: every number of the paper's Tables 1-9 is there, named consistently, and every gain
the paper prints reproduces from the numbers (or carries a note saying it does not)."""

import pandas as pd
import pytest

from lowssl.results.paper_tables import (
    KD_METHODS,
    KEY,
    read_paper_tables,
    read_printed_gains,
    recompute_gains,
)

BACKBONES = {
    "mobilenet_v2",
    "resnet18",
    "resnet34",
    "resnet50",
    "vit_tiny_patch16_224",
    "vit_small_patch16_224",
}
METHODS = {"", "supervised", "dino", "swav", "moco_v2", "moco_v2_multicrop", *KD_METHODS, "shi2022", "ressl"}
METRICS = {
    *(f"linear_top{k}" for k in (1, 5)),
    *(f"semi_{p}_top{k}" for p in ("1pct", "10pct") for k in (1, 5)),
    *(
        f"coco_{s}_{m}"
        for s in ("1x", "2x")
        for m in ("APbb", "APbb50", "APbb75", "APmk", "APmk50", "APmk75")
    ),
    "params_M",
    "GFLOPs",
    "teacher_linear_top1",
}


@pytest.fixture(scope="module")
def tables():
    return read_paper_tables()


@pytest.fixture(scope="module")
def gains():
    return read_printed_gains()


def numbers_per_row(tables, table):
    return tables[tables["table"] == table].groupby(["backbone", "row"]).size().to_dict()


def test_every_table_has_all_its_numbers(tables):
    # Table 1: 6 rows x top-1/top-5, SimReg has no top-5 ("-"); Table 2: supervised + 3 methods x 2 recipes.
    assert (tables["table"] == 1).sum() == 11
    assert (tables["table"] == 2).sum() == 7 * 2
    # Table 3: 6 backbones x (#params, GFLOPs + 3 rows x top-1/top-5).
    assert set(numbers_per_row(tables, 3).values()) == {2} and len(numbers_per_row(tables, 3)) == 6 * 4
    # Table 4: 3 backbones x 3 rows x 6 APs.
    assert numbers_per_row(tables, 4) == {
        (b, r): 6
        for b in ("mobilenet_v2", "resnet18", "resnet34")
        for r in ("supervised", "dino-baseline-200", "dino-ours-200")
    }
    # Table 5: per row, the columns it prints (MobileNetV2, ResNet18, ResNet34 x top-1, top-5).
    table5 = tables[tables["table"] == 5].groupby("row").size().to_dict()
    assert table5 == {
        "supervised": 6,
        "shi2022": 1,
        "ressl": 1,
        "compress-moco_v2_resnet50": 2,
        "simreg-moco_v2_resnet50": 2,
        "seed-moco_v2_resnet152": 4,
        "disco-moco_v2_resnet152": 4,
        "bingo-moco_v2_resnet152": 4,
        "seed-swav_resnet50x2": 4,
        "disco-swav_resnet50x2": 4,
        "bingo-swav_resnet50x2": 4,
        "dino-ours-200": 6,
        "dino-ours-400": 6,
    }
    # Table 6: 3 backbones x 3 rows x 4 numbers, plus #params and GFLOPs per backbone.
    semi = tables[(tables["table"] == 6) & tables["metric"].str.startswith("semi_")]
    assert semi.groupby(["backbone", "row"]).size().to_dict() == {
        (b, r): 4
        for b in ("mobilenet_v2", "resnet18", "resnet34")
        for r in ("dino-baseline-200", "dino-ours-200", "dino-ours-400")
    }
    assert (tables["table"] == 6).sum() == 36 + 3 * 2
    # Table 7: 4 distillation rows x (teacher accuracy, 1%, 10%) + 2 "Ours" rows x (1%, 10%).
    assert (tables["table"] == 7).sum() == 4 * 3 + 2 * 2
    # Tables 8 and 9: 2 and 4 rows x 2 schedules x 6 APs.
    assert set(numbers_per_row(tables, 8).values()) == {12} and len(numbers_per_row(tables, 8)) == 2
    assert set(numbers_per_row(tables, 9).values()) == {12} and len(numbers_per_row(tables, 9)) == 4
    assert len(tables) == 11 + 14 + 48 + 54 + 48 + 42 + 16 + 24 + 48


def test_rows_are_unique_and_use_the_documented_names(tables):
    assert not tables.duplicated(KEY).any()
    assert set(tables["backbone"]) <= BACKBONES
    assert set(tables["method"]) <= METHODS
    assert set(tables["metric"]) <= METRICS
    assert set(tables["recipe"]) <= {"", "baseline", "ours"}
    assert set(tables.loc[tables["protocol"] == "", "row"]) == {"backbone"}  # only #params / GFLOPs
    assert tables["value"].between(0, 100).all()


def test_a_number_quoted_in_several_tables_is_the_same_everywhere(tables):
    # e.g. DINO MobileNetV2 66.2 in Tables 1, 2, 3; ResNet18 #params in Tables 3 and 6.
    same_number = [
        "method",
        "recipe",
        "backbone",
        "teacher",
        "teacher_epochs",
        "pretrain_epochs",
        "protocol",
        "metric",
    ]
    spread = tables.groupby(same_number, dropna=False)["value"].nunique()
    assert spread.max() == 1, spread[spread > 1]


def test_every_printed_gain_reproduces_or_says_why_not(gains, tables):
    checked = recompute_gains(tables, gains)
    assert checked[["value", "reference_value"]].notna().all().all(), "a gain names a row that does not exist"
    reproduces = (checked["computed_gain"] - checked["printed_gain"]).abs() <= 0.05 + 1e-9
    honest = reproduces == (checked["note"] == "")
    assert honest.all(), checked.loc[
        ~honest, [*KEY, "reference_row", "printed_gain", "computed_gain", "note"]
    ]


def test_every_gain_in_the_tables_is_listed(gains):
    in_tables = gains[gains["printed_in"].str.startswith("Table")]
    assert (in_tables["printed_in"] == "Table " + in_tables["table"].astype(str)).all()
    assert in_tables.groupby("table").size().to_dict() == {
        2: 6,
        3: 12,
        4: 18,
        5: 10,
        6: 24,
        7: 4,
        8: 12,
        9: 12,
    }
    assert not in_tables.duplicated(KEY).any()


@pytest.mark.parametrize("table", [5, 7, 9])
def test_best_baseline_references_are_the_best_distillation_number_of_the_column(gains, tables, table):
    printed = recompute_gains(
        tables, gains[(gains["table"] == table) & (gains["printed_in"] == f"Table {table}")]
    )
    kd = tables[(tables["table"] == table) & tables["method"].isin(KD_METHODS)]
    best = kd.groupby(["backbone", "metric"])["value"].max()
    references = best.reindex(pd.MultiIndex.from_frame(printed[["backbone", "metric"]])).to_numpy()
    assert (printed["reference_value"].to_numpy() == references).all()
