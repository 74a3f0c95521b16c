"""Table 5 (linear evaluation, MobileNetV2 / ResNet18 / ResNet34): the paper's rows beside this run's.

Paper rows are every row of the paper's Table 5; their gains are recomputed the way the paper prints
them: an "Ours" row against the best distillation baseline of the same column, whatever that
baseline's epochs (``results/paper/README.md`` shows this reproduces every printed gain).

"This run" rows come from the results records: method ``dino`` (both recipes) and ``random-init``, under
one dataset and protocol, one row per (method, recipe, pre-training epochs, branch). A cell is the mean
over the seeds that ran it with its 95 % Student-t interval and n (results/stats.py); within one seed the
latest record wins, so a rerun replaces an earlier one. An ``ours`` row's gain is the paired difference
against this run's ``baseline`` row of the same method, epochs and branch (ours - baseline per seed, over
the seeds both ran), summarised the same way. Records of one cell must share one pre-training budget
(every stage records it as ``details.pretrain_budget``; results.stats.require_one_budget, checked
before a re-run seed replaces its older record), and so must the two sides of a gain: otherwise an
:class:`~results.stats.AggregationError` names the budgets and their runs.

The header says scale, dataset, protocol and hardware, and every row names its source, so tiny-scale
numbers are never read as ImageNet ones.
"""

from __future__ import annotations

import pandas as pd

from lowssl.records import markdown_safe, recorded_budget, recorded_protocol, text_cells
from lowssl.results.paper_tables import KD_METHODS
from lowssl.results.stats import (
    AggregationError,
    paired_difference,
    require_one_budget,
    require_one_protocol,
    summarise,
)

BACKBONES = {"mobilenet_v2": "MobileNetV2", "resnet18": "ResNet18", "resnet34": "ResNet34"}
METRICS = {"linear_top1": "top-1", "linear_top5": "top-5"}
RUN_METHODS = ("random-init", "random-init-bn", "dino")  # in the order their rows are shown
RECIPE_ORDER = {"baseline": 0, "ours": 1}  # any other recipe (random-init's) first
METHOD_LABELS = {
    "supervised": "Supervised",
    "shi2022": "Shi et al. (2022)",
    "ressl": "ReSSL",
    "compress": "CompRess",
    "simreg": "SimReg",
    "seed": "SEED",
    "disco": "DisCo",
    "bingo": "BINGO",
    "dino": "DINO",
    "random-init": "Random init",
    "random-init-bn": "Random init, BN statistics re-estimated",
}
TEACHER_LABELS = {
    "moco_v2_resnet50": "MoCo-v2 R50",
    "moco_v2_resnet152": "MoCo-v2 R152",
    "swav_resnet50x2": "SwAV R50x2",
}
ROW_KEY = ["source", "method", "recipe", "teacher", "teacher_epochs", "pretrain_epochs", "branch"]
VALUE_COLUMNS = [
    f"{backbone}_{metric.removeprefix('linear_')}" for backbone in BACKBONES for metric in METRICS
]
GAIN_REFERENCE = {
    "paper": "best distillation baseline of the column",
    "this run": "this run's baseline recipe",
}


def paper_long(paper: pd.DataFrame) -> pd.DataFrame:
    """Table 5's numbers, one per row, with ``gain`` on the "Ours" rows."""
    rows = paper[paper["table"] == 5].assign(source="paper", branch="")
    best_kd = rows[rows["method"].isin(KD_METHODS)].groupby(["backbone", "metric"])["value"].max()
    reference = best_kd.reindex(pd.MultiIndex.from_frame(rows[["backbone", "metric"]])).to_numpy()
    return rows.assign(gain=(rows["value"] - reference).where(rows["recipe"] == "ours"))


CELL = ["method", "recipe", "pretrain_epochs", "branch", "backbone", "metric"]
UNKNOWN_SEED = -1  # a record without a seed counts as one seed of its own


def run_long(records: pd.DataFrame, dataset: str, protocol: str) -> pd.DataFrame:
    """This run's numbers, one per cell (mean over seeds, ``ci`` half-width, ``n``), with the paired
    ``gain`` (and its ``gain_ci``, ``gain_n``) on ``ours`` cells that have a baseline."""
    rows = records[
        (records["dataset"] == dataset)
        & (records["protocol"] == protocol)
        & records["method"].isin(RUN_METHODS)
        & records["backbone"].isin(list(BACKBONES))
        & records["metric"].isin(list(METRICS))
    ]
    rows = rows.assign(
        budget=rows["details"].map(recorded_budget), seed=rows["seed"].fillna(UNKNOWN_SEED).astype(int)
    )
    for key, group in rows.groupby(CELL, sort=False):  # before a re-run seed replaces its older record
        settings = dict(zip(group["run_id"], group["details"].map(recorded_protocol), strict=True))
        where = f"one cell ({', '.join(map(str, key))})"
        require_one_protocol(settings, where)
        require_one_budget(zip(group["run_id"], group["budget"], strict=True), where)
    rows = rows.sort_values("created_at", kind="stable").drop_duplicates([*CELL, "seed"], keep="last")
    cells = {}
    for key, group in rows.groupby(CELL, sort=False):
        cells[key] = (dict(zip(group["seed"], group["value"], strict=True)), group["budget"].iloc[0])
    long = []
    for key, (values, budget) in cells.items():
        summary = summarise([values[seed] for seed in sorted(values)])
        row = dict(zip(CELL, key, strict=True), value=summary.mean, ci=summary.half_width, n=summary.n)
        method, recipe, epochs, branch, backbone, metric = key
        reference = cells.get((method, "baseline", epochs, branch, backbone, metric))
        if recipe == "ours" and reference is not None:
            row.update(_gain(key, values, budget, *reference))
        long.append(row)
    frame = pd.DataFrame(long, columns=[*CELL, "value", "ci", "n", "gain", "gain_ci", "gain_n"])
    frame = frame.assign(
        source="this run",
        teacher="",
        teacher_epochs=pd.NA,
        method_order=frame["method"].map(RUN_METHODS.index),
        recipe_order=frame["recipe"].map(RECIPE_ORDER).fillna(-1),
    )
    return frame.sort_values(["method_order", "recipe_order", "pretrain_epochs", "branch"], kind="stable")


def _gain(key: tuple, ours: dict, budget: str, baseline: dict, baseline_budget: str) -> dict:
    if budget != baseline_budget:
        raise AggregationError(
            f"the gain of {', '.join(map(str, key))} would compare different pre-training budgets: ours "
            f"{budget or 'unrecorded'}, baseline {baseline_budget or 'unrecorded'}; run both at one budget"
        )
    seeds = sorted(set(ours) & set(baseline))  # over the seeds both recipes ran (paired)
    if not seeds:
        return {}
    gain = paired_difference({s: ours[s] for s in seeds}, {s: baseline[s] for s in seeds})
    return {"gain": gain.mean, "gain_ci": gain.half_width, "gain_n": gain.n}


#: Per value column of the wide table: the value, then these suffixes (this run's rows fill them all).
SUFFIXES = ("ci", "n", "gain", "gain_ci", "gain_n")


def wide(long: pd.DataFrame) -> list[dict]:
    """One dict per table row: the row key, ``{backbone}_{top1,top5}`` and their ``..._<suffix>``."""
    rows = []
    for key, group in long.groupby(ROW_KEY, dropna=False, sort=False):
        row = dict(zip(ROW_KEY, key, strict=True))
        for record in group.to_dict("records"):
            column = f"{record['backbone']}_{record['metric'].removeprefix('linear_')}"
            row[column] = record["value"]
            for suffix in SUFFIXES:
                value = record.get(suffix)
                row[f"{column}_{suffix}"] = None if value is None or pd.isna(value) else value
            if row[f"{column}_gain"] is not None:
                row[f"{column}_gain"] = round(row[f"{column}_gain"], 2) + 0.0  # + 0.0 turns -0.0 into 0.0
        rows.append(row)
    return rows


def table5_frame(paper: pd.DataFrame, records: pd.DataFrame, dataset: str, protocol: str) -> pd.DataFrame:
    """The table as data: paper rows, then this run's, with values, gains and what the gains are against."""
    columns = ROW_KEY + [
        c for column in VALUE_COLUMNS for c in (column, *(f"{column}_{s}" for s in SUFFIXES))
    ]
    rows = wide(paper_long(paper)) + wide(run_long(records, dataset, protocol))
    counts = {f"{column}_{s}": "Int64" for column in VALUE_COLUMNS for s in ("n", "gain_n")}
    frame = pd.DataFrame(rows, columns=columns).astype(
        {"teacher_epochs": "Int64", "pretrain_epochs": "Int64", **counts}
    )
    frame[[c for c in columns if c.endswith("_gain") or c.endswith("_ci")]] = frame[
        [c for c in columns if c.endswith("_gain") or c.endswith("_ci")]
    ].astype(float)
    has_gain = frame.filter(like="_gain").notna().any(axis=1)
    return frame.assign(gain_reference=frame["source"].map(GAIN_REFERENCE).where(has_gain, ""))


def cell(row: pd.Series, column: str, decimals: int) -> str:
    """A paper cell as the paper prints it; this run's with its interval and n (``n=1``: no interval)."""
    value, gain = row[column], row[f"{column}_gain"]
    if pd.isna(value):
        return "-"
    if pd.isna(row[f"{column}_n"]):  # the paper's number
        return f"{value:.{decimals}f}" + ("" if pd.isna(gain) else f" ({gain:+.{decimals}f})")
    text = _with_interval(value, row[f"{column}_ci"], row[f"{column}_n"], decimals, "")
    if pd.isna(gain):
        return text
    return f"{text}; gain {_with_interval(gain, row[f'{column}_gain_ci'], row[f'{column}_gain_n'], decimals, '+')}"


def _with_interval(value: float, half_width: float, n: int, decimals: int, sign: str) -> str:
    if pd.isna(half_width):
        return f"{value:{sign}.{decimals}f} (n={n})"
    return f"{value:{sign}.{decimals}f} ± {half_width:.{decimals}f} (n={n})"


def method_label(method: str, recipe: str, branch: str) -> str:
    label = METHOD_LABELS.get(method, method)
    if recipe and not method.startswith("random-init"):  # a random-init backbone had no pre-training recipe
        label += f", {recipe} recipe"
    return label + (" (teacher branch)" if branch == "teacher" else "")


def markdown_table(frame: pd.DataFrame, dataset: str, scale: str) -> str:
    sources = {"paper": "paper (ImageNet-1k)", "this run": f"this run ({dataset}, {scale})"}
    # The paper prints one decimal; records keep two (0.01% is one image in 10,000), and rounding them
    # would show gains that do not match the shown values.
    decimals = frame["source"].map({"paper": 1, "this run": 2})
    shown = pd.DataFrame(
        {
            "Source": frame["source"].map(sources),
            "Method": frame.apply(
                lambda row: method_label(row["method"], row["recipe"], row["branch"]), axis=1
            ),
            "Teacher": frame["teacher"].map(lambda t: TEACHER_LABELS.get(t, t) or "-"),
            "Teacher epochs": frame["teacher_epochs"].map(lambda e: "-" if pd.isna(e) else str(e)),
            "Pre-train epochs": frame["pretrain_epochs"].map(lambda e: "-" if pd.isna(e) else str(e)),
        }
    )
    for column in VALUE_COLUMNS:
        backbone, metric = column.rsplit("_", 1)
        heading = f"{BACKBONES[backbone]} {METRICS['linear_' + metric]}"
        shown[heading] = [
            cell(row, column, places) for (_, row), places in zip(frame.iterrows(), decimals, strict=True)
        ]
    return text_cells(shown, markdown_safe).to_markdown(index=False, disable_numparse=True)


def render_table5(
    paper: pd.DataFrame,
    records: pd.DataFrame,
    scale: str,
    dataset: str,
    protocol: str,
    hardware: str,
    budget: str = "",
) -> tuple[str, pd.DataFrame]:
    """Markdown (header block + table) and the table as a DataFrame (also what the CSV holds)."""
    frame = table5_frame(paper, records, dataset, protocol)
    ran = (frame["source"] == "this run").any()
    blocks = [
        "# Table 5: linear evaluation, MobileNetV2 / ResNet18 / ResNet34",
        "| | this run | paper |\n"
        "|---|---|---|\n"
        f"| scale | {scale} | paper |\n"
        f"| dataset | {dataset} | ImageNet-1k |\n"
        f"| protocol | {protocol} | the paper's linear probe (distillation baselines: their own papers') |\n"
        f"| hardware | {hardware} | 8 GPUs, batch 1024 (pre-training) |"
        + (f"\n| budget per run | {budget} | 200 / 400 epochs of ImageNet-1k |" if budget else ""),
        f"This run's rows are {dataset} numbers at scale {scale} under protocol {protocol}; the paper's rows are\n"
        "ImageNet-1k numbers under the paper's protocols. Compare rows only within one source.\n"
        'Gains: paper "ours recipe" rows vs the best distillation baseline (CompRess, SimReg, SEED, DisCo,\n'
        'BINGO) of the column, whatever its epochs, as the paper prints them; this run\'s "ours recipe" rows vs\n'
        "this run's baseline recipe at the same epochs and branch, paired by seed. This run's cells: mean over\n"
        "n seeds ± the 95 % Student-t interval (n=1: one seed, no interval).",
    ]
    if not ran:
        blocks.append(f"No records of this run match dataset {dataset} and protocol {protocol}.")
    return "\n\n".join([*blocks, markdown_table(frame, dataset, scale)]) + "\n", frame
