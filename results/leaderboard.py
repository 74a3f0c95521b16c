"""The leaderboard: every number of the paper and every results record, in one pandas table.

Rows come from ``results/paper/tables.csv`` (source ``paper``, origin ``Table N``) and from the results
records under a runs folder (source ``lowssl-run``, origin the run id).

Comparability rule. Two rows are comparable only when they share ``comparable_group``: the same
dataset, the same protocol and the same metric, and the same branch role. The branch role tells an
evaluated EMA / momentum copy (branch ``teacher``) from the network a method trains by gradient (every
other branch: ``student``, ``query``, ``backbone``, or none); it is part of the group only for
``teacher``. Method, recipe, backbone and epochs are what a comparison varies, so they are not part of
the group. Consequences: the paper's ImageNet-1k rows are never comparable with Fashion-MNIST runs; a
number under lowssl's ``fast`` protocol is never comparable with one under ``sslight``; the paper's own
rows (``paper-linear``) are not comparable with the distillation baselines' quoted numbers, which each
come under their own paper's protocol (``results/paper/README.md``). Protocol names are matched
exactly, so ``paper-linear`` and lowssl's ``sslight`` (its implementation of the authors' probe) stay
apart: the paper's text and the authors' code describe different probes. Within a group, the summary
pools a run's seeds into one row only when they share the protocol's settings and the pre-training
budget every stage records (``details.pretrain_budget``): otherwise an
:class:`~results.stats.AggregationError` names what differs and the runs on each side.

The paper's datasets follow from the metric: linear, semi-supervised and teacher accuracies are
ImageNet-1k, ``coco_*`` are COCO 2017; ``params_M`` / ``GFLOPs`` describe an architecture, not a
dataset, and have neither dataset nor protocol.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path

import pandas as pd

from lowssl.errors import BadInput
from lowssl.records import read_records, recorded_budget, recorded_protocol
from lowssl.results.paper_tables import read_paper_tables
from lowssl.results.stats import require_one_protocol, summarise

COLUMNS = [
    "dataset",
    "protocol",
    "branch",
    "backbone",
    "method",
    "recipe",
    "pretrain_epochs",
    "teacher",
    "teacher_epochs",
    "metric",
    "value",
    "seed",
    "source",
    "origin",
    "checkpoint",  # a run's checkpoint_sha256 (the file it evaluated); "" for the paper
    "comparable_group",
    "settings",  # a run's resolved protocol (lowssl.records.recorded_protocol) as JSON; "" for the paper
    "pretrain_budget",  # a run's pre-training budget (lowssl.records.recorded_budget); "" for the paper
]
#: One row of the default view: what a comparison varies, then the number over seeds and where it holds.
ENTRY = ["source", "method", "recipe", "teacher", "teacher_epochs", "pretrain_epochs", "branch"]
SUMMARY_COLUMNS = [
    "metric",
    "backbone",
    "group",
    *ENTRY,
    "value",
    "n",
    "protocol",
    "dataset",
    "pretrain_budget",
    "origin",  # where the row's numbers come from: the paper's table, or each pooled run's id
    "comparable_group",
]
ARCHITECTURE_METRICS = ("params_M", "GFLOPs")


def paper_dataset(metric: str) -> str:
    if metric in ARCHITECTURE_METRICS:
        return ""
    return "coco-2017" if metric.startswith("coco_") else "imagenet-1k"


def comparable_group(frame: pd.DataFrame) -> pd.Series:
    """``dataset|protocol|metric``, plus ``|teacher`` for rows of an evaluated teacher branch."""
    group = (
        frame["dataset"].replace("", "-") + "|" + frame["protocol"].replace("", "-") + "|" + frame["metric"]
    )
    return group.where(frame["branch"] != "teacher", group + "|teacher")


def paper_rows(paper: pd.DataFrame) -> pd.DataFrame:
    # The paper evaluates the student of its own and of the distillation runs (docs/recipes.md,
    # "Paper vs SSLight");
    # a supervised model or an architecture has no branch.
    trained = ~paper["method"].isin(["", "supervised"])
    return paper.assign(
        dataset=paper["metric"].map(paper_dataset),
        branch=trained.map({True: "student", False: ""}),
        source="paper",
        origin="Table " + paper["table"].astype(str),
    )


def run_rows(records: pd.DataFrame) -> pd.DataFrame:
    settings = records["details"].map(lambda details: json.dumps(recorded_protocol(details), sort_keys=True))
    return records.assign(
        teacher="",
        teacher_epochs=pd.NA,
        source="lowssl-run",
        origin=records["run_id"],
        checkpoint=records["checkpoint_sha256"],
        settings=settings,
        pretrain_budget=records["details"].map(recorded_budget),
    )


def build_leaderboard(paper: pd.DataFrame, records: pd.DataFrame) -> pd.DataFrame:
    """Paper rows and run records in :data:`COLUMNS`, sorted by comparable group, then best value first."""
    frame = pd.concat(
        [paper_rows(paper).assign(checkpoint="", settings="", pretrain_budget=""), run_rows(records)],
        ignore_index=True,
    )
    frame["pretrain_epochs"] = frame["pretrain_epochs"].astype("Int64")
    frame["teacher_epochs"] = frame["teacher_epochs"].astype("Int64")
    frame["comparable_group"] = comparable_group(frame)
    frame = frame.sort_values(
        ["comparable_group", "backbone", "value"], ascending=[True, True, False], kind="stable"
    )
    return frame[COLUMNS].reset_index(drop=True)


def summarise_leaderboard(frame: pd.DataFrame) -> pd.DataFrame:
    """The default view, per metric and backbone: one row per method / recipe / teacher / epochs /
    branch within a comparable group, the value as mean ± 95 % CI over seeds with n (results/stats.py;
    the paper's numbers as printed), and ``group``: rows with the same group are comparable.
    Architecture rows (params, GFLOPs) describe no training and are left out."""
    frame = frame[~frame["metric"].isin(ARCHITECTURE_METRICS)]
    # One number per seed: a record without a seed (a third-party checkpoint, a paper row) is its own.
    frame = frame.assign(seed_key=frame["seed"].astype("string").fillna(frame["origin"]))
    # A pre-training budget is part of a row's key: runs of different budgets are never pooled, each
    # budget is its own row, and the row says which (lowssl.records.pretrain_budget).
    keys = ["metric", "backbone", "comparable_group", *ENTRY, "protocol", "dataset", "pretrain_budget"]
    rows = []
    for key, group in frame.groupby(keys, dropna=False, sort=False):
        row = dict(zip(keys, key, strict=True))
        if row["source"] != "paper":  # before one row per seed is kept: a re-run seed must not hide
            where = f"{row['metric']} of {row['method']} {row['recipe']} {row['backbone']} under {row['protocol']}"
            require_one_protocol(
                dict(zip(group["origin"], group["settings"].map(json.loads), strict=True)), where
            )
        group = group.drop_duplicates("seed_key")
        if row["source"] == "paper":
            row["value"], row["n"] = f"{group['value'].iloc[0]:.1f}", ""
        else:
            summary = summarise(group["value"].tolist())
            row["value"], row["n"] = summary.format().rsplit(" (", 1)[0], summary.n
        row["origin"] = ", ".join(dict.fromkeys(group["origin"]))
        row["mean"] = group["value"].mean()
        rows.append(row)
    summary_frame = pd.DataFrame(rows, columns=[*keys, "value", "n", "origin", "mean"])
    summary_frame = summary_frame.sort_values(
        ["metric", "backbone", "comparable_group", "mean"], ascending=[True, True, True, False], kind="stable"
    )
    groups = {
        name: f"G{index + 1}" for index, name in enumerate(dict.fromkeys(summary_frame["comparable_group"]))
    }
    return summary_frame.assign(group=summary_frame["comparable_group"].map(groups))[
        SUMMARY_COLUMNS
    ].reset_index(drop=True)


def load_leaderboard(runs_dir: str | Path | None = None) -> pd.DataFrame:
    return build_leaderboard(read_paper_tables(), read_records(runs_dir))


class FilterError(BadInput, ValueError):
    """A leaderboard filter names a value no row holds (a typo would otherwise print an empty table)."""


def select(frame: pd.DataFrame, **allowed: list[str] | None) -> pd.DataFrame:
    """Rows whose column ``name`` is one of ``allowed[name]`` for every filter given (None: no filter).
    A dataset also matches its variants tagged with a subset or an evaluation set (``fashion-mnist``
    matches ``fashion-mnist/train3000/eval2000``). A value no row holds is a :class:`FilterError`
    naming the closest values present (difflib) and all of them."""
    whole = frame
    for column, values in allowed.items():
        if not values:
            continue
        present = sorted(set(whole[column].dropna().astype(str)) - {""})
        if column == "dataset":  # each tagged dataset is also known by its untagged name
            present = sorted({*present, *(name.split("/")[0] for name in present)})
        unknown = [value for value in values if value not in present]
        if unknown:
            close = difflib.get_close_matches(unknown[0], present, n=3, cutoff=0.5)
            hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
            raise FilterError(
                f"no row has {column} {unknown[0]!r}: {hint}the {column} values present are "
                f"{', '.join(present)}"
            )
        held = frame[column].astype("string").fillna("")
        keep = held.isin(values)
        if column == "dataset":
            keep |= held.str.split("/").str[0].isin(values)
        frame = frame[keep]
    return frame


#: The ``source`` of a checkpoint's own rows in :func:`beside_checkpoint`: never pooled with other runs.
THIS_CHECKPOINT = "this checkpoint"


def beside_checkpoint(frame: pd.DataFrame, sha256: str) -> pd.DataFrame:
    """The rows of the checkpoint whose SHA-256 is (or starts with) ``sha256``, their ``source`` set to
    :data:`THIS_CHECKPOINT`, beside every row comparable with one of them (same ``comparable_group``)
    of the same backbone: the paper's and other runs'. A checkpoint without rows, or a prefix that
    names two checkpoints, is a :class:`FilterError`; ``sha256`` is a non-empty hex string."""
    own = frame["checkpoint"].astype("string").fillna("").str.startswith(sha256.lower())
    matched = sorted(set(frame.loc[own, "checkpoint"]))
    if not matched:
        raise FilterError(
            f"no record comes from checkpoint {sha256[:12]}: evaluate it first "
            "(make evaluate-checkpoint CKPT=...), or name its records folder with --runs-dir"
        )
    if len(matched) > 1:
        raise FilterError(f"{sha256} starts {len(matched)} checkpoints' SHA-256: give more of it")
    mine = frame[own]
    beside = frame["comparable_group"].isin(mine["comparable_group"]) & frame["backbone"].isin(
        mine["backbone"]
    )
    shown = own | beside
    rows = frame[shown]
    return rows.assign(source=rows["source"].mask(own[shown], THIS_CHECKPOINT))
