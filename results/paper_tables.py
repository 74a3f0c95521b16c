"""The paper's Tables 1-9 as data (``results/paper/tables.csv``) and its printed gains (``gains.csv``).

``results/paper/README.md`` documents the columns, the names and which reference each table's gains
use. A row of ``tables.csv`` is one printed number, keyed by (table, row, backbone, metric); ``row`` is
a label unique within a table and backbone (``dino-ours-400``, ``bingo-moco_v2_resnet152``, ...).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

PAPER_DIR = Path(__file__).resolve().parent / "paper"
KEY = ["table", "row", "backbone", "metric"]

#: Knowledge-distillation baselines: the rows the paper's "best state-of-the-art model" is taken from.
KD_METHODS = ("compress", "simreg", "seed", "disco", "bingo")


def read_paper_tables(path: str | Path = PAPER_DIR / "tables.csv") -> pd.DataFrame:
    """Every number of the paper's tables; epochs are nullable integers (empty where not printed)."""
    return pd.read_csv(
        path,
        keep_default_na=False,
        na_values={"teacher_epochs": [""], "pretrain_epochs": [""]},
        dtype={"table": int, "teacher_epochs": "Int64", "pretrain_epochs": "Int64", "value": float},
    )


def read_printed_gains(path: str | Path = PAPER_DIR / "gains.csv") -> pd.DataFrame:
    """Every gain the paper prints, with the row it is measured against (``reference_row``)."""
    return pd.read_csv(path, keep_default_na=False, dtype={"table": int, "printed_gain": float})


def recompute_gains(tables: pd.DataFrame, gains: pd.DataFrame) -> pd.DataFrame:
    """``gains`` plus ``value``, ``reference_value`` and ``computed_gain`` (value - reference) from ``tables``."""
    values = tables.set_index(KEY)["value"]
    row_keys = pd.MultiIndex.from_frame(gains[KEY])
    reference_keys = pd.MultiIndex.from_frame(gains[KEY].assign(row=gains["reference_row"]))
    out = gains.assign(
        value=values.reindex(row_keys).to_numpy(), reference_value=values.reindex(reference_keys).to_numpy()
    )
    return out.assign(computed_gain=(out["value"] - out["reference_value"]).round(2))
