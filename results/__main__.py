"""``python -m lowssl.results leaderboard|table5``: print (and write) the leaderboard or Table 5."""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys
from pathlib import Path

from lowssl.cli import StageParser, run_stage
from lowssl.io import atomic_write_text, sha256_file
from lowssl.records import markdown_safe, read_records, spreadsheet_safe, text_cells
from lowssl.results.leaderboard import (
    THIS_CHECKPOINT,
    FilterError,
    beside_checkpoint,
    load_leaderboard,
    select,
    summarise_leaderboard,
)
from lowssl.results.paper_tables import read_paper_tables
from lowssl.results.table5 import render_table5

#: The default view's columns beside a checkpoint: its backbone is in the header, each group's protocol
#: (long where a run changed it: detection's overrides) in the legend; a column no row fills is left out.
CHECKPOINT_VIEW = [
    "group",
    "metric",
    "dataset",
    "source",
    "method",
    "recipe",
    "teacher",
    "teacher_epochs",
    "pretrain_epochs",
    "branch",
    "value",
    "n",
    "pretrain_budget",
    "origin",
    "comparable_group",
]


def this_machine() -> str:
    import torch  # already loaded by lowssl.records

    gpus = torch.cuda.device_count()
    gpu_text = f", {gpus} x {torch.cuda.get_device_name(0)}" if gpus else ", no GPU"
    return f"{os.cpu_count()} CPU cores ({platform.machine()}){gpu_text}"


def print_table(frame, flat: bool) -> None:
    """The leaderboard as markdown; the default view with its legend of comparable groups."""
    printable = frame.astype(object).where(frame.notna(), None)  # tabulate shows None (not pd.NA) as blank
    # The flat view's settings (each run's resolved protocol as JSON) go to --out only: too wide to print.
    shown = printable.drop(columns="settings" if flat else "comparable_group")
    if flat:
        shown["checkpoint"] = shown["checkpoint"].str[:12]  # as the stages print it; --out has it whole
    print(text_cells(shown, markdown_safe).to_markdown(index=False, floatfmt=".2f"))
    if not flat:
        print("\nRows are comparable only within one group:")
        for group, name in dict(zip(frame["group"], frame["comparable_group"], strict=True)).items():
            print(f"  {group}: {name.replace('|', ', ')}")


def checkpoint_sha256(checkpoint: str) -> str:
    """The SHA-256 of a checkpoint file, or the SHA-256 (or its first 8+ digits) given instead."""
    if Path(checkpoint).is_file():
        return sha256_file(checkpoint)
    if re.fullmatch(r"[0-9a-fA-F]{8,64}", checkpoint):
        return checkpoint.lower()
    raise FilterError(f"--checkpoint {checkpoint}: no such file, nor a SHA-256 (8 to 64 hex digits)")


def numbers(count: int) -> str:
    return f"{count} number" + ("" if count == 1 else "s")


def print_beside_checkpoint(full, args: argparse.Namespace) -> None:
    """The checkpoint's own rows beside the comparable rows of its backbone, under a header saying so."""
    rows = beside_checkpoint(full, checkpoint_sha256(args.checkpoint))
    own = rows[rows["source"] == THIS_CHECKPOINT]
    backbones = ", ".join(sorted(set(own["backbone"])))
    others = len(rows) - len(own)
    beside = (
        f"beside {numbers(others)} of {backbones} comparable with them"
        if others
        else f"no other number of {backbones} is comparable with them yet"
    )
    print(
        f"Checkpoint {args.checkpoint} ({backbones}, sha256 {own['checkpoint'].iloc[0][:12]}): its "
        f"{numbers(len(own))}, {beside} (comparable: the same dataset, protocol and metric, one group)."
    )
    if not (rows["source"] == "paper").any():
        print(
            "No number of the paper is comparable (it measured ImageNet-1k and COCO 2017): "
            f"python -m lowssl.results leaderboard --backbone {backbones.replace(',', '')} lists them."
        )
    whole = f"written to {args.out}" if args.out else "python -m lowssl.results leaderboard --out FILE"
    print(f"The whole leaderboard: {whole}.\n")
    if args.flat:
        print_table(rows, flat=True)
        return
    summary = summarise_leaderboard(rows)
    summary = summary[[column for column in CHECKPOINT_VIEW if column in summary]]
    empty = [column for column in summary if summary[column].astype("string").fillna("").eq("").all()]
    print_table(summary.drop(columns=empty), flat=False)


def leaderboard(args: argparse.Namespace) -> None:
    full = select(
        load_leaderboard(args.runs_dir),
        backbone=args.backbone,
        metric=args.metric,
        dataset=args.dataset,
        protocol=args.protocol,
    )
    frame = full if args.flat else summarise_leaderboard(full)
    if args.checkpoint:
        print_beside_checkpoint(full, args)
    else:
        print_table(frame, args.flat)
    if args.out:
        atomic_write_text(args.out, text_cells(frame, spreadsheet_safe).to_csv(index=False))
        print(f"wrote {len(frame)} rows to {args.out}", file=sys.stderr)


def table5(args: argparse.Namespace) -> None:
    markdown, frame = render_table5(
        read_paper_tables(),
        read_records(args.runs_dir),
        scale=args.scale,
        dataset=args.dataset,
        protocol=args.protocol,
        hardware=args.hardware or this_machine(),
        budget=args.budget or "",
    )
    print(markdown, end="")
    csv_text = text_cells(frame, spreadsheet_safe).to_csv(index=False)
    for path, text in ((args.out_md, markdown), (args.out_csv, csv_text)):
        if path:
            atomic_write_text(path, text)
            print(f"wrote {path}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = StageParser(prog="python -m lowssl.results", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    board = commands.add_parser(
        "leaderboard", help="the paper's rows and every results record, with comparable groups"
    )
    board.add_argument("--backbone", nargs="+", help="keep only these backbones (e.g. resnet18 mobilenet_v2)")
    board.add_argument("--metric", nargs="+", help="keep only these metrics (e.g. linear_top1)")
    board.add_argument(
        "--dataset",
        nargs="+",
        help="keep only these datasets (e.g. imagenet-1k fashion-mnist); a dataset also keeps its "
        "subset-tagged rows (fashion-mnist: fashion-mnist/train3000/eval2000 too)",
    )
    board.add_argument("--protocol", nargs="+", help="keep only these protocols (e.g. sslight_tiny knn_tiny)")
    board.add_argument("--runs-dir", help="results records folder (default results/runs)")
    board.add_argument(
        "--flat",
        action="store_true",
        help="every paper number and record as it is, one per row (all columns)",
    )
    board.add_argument(
        "--checkpoint",
        help="print only the rows of this checkpoint (its file, or its SHA-256 or first 8+ digits of it) "
        "beside the rows of its backbone comparable with them; --out still writes the whole leaderboard",
    )
    board.add_argument(
        "--out", help="also write the (filtered) leaderboard as CSV, e.g. results/leaderboard.csv"
    )
    board.set_defaults(run=leaderboard)

    t5 = commands.add_parser("table5", help="Table 5: the paper's rows beside this run's")
    t5.add_argument("--scale", required=True, help="scale of this run's rows, e.g. tiny or paper")
    t5.add_argument("--dataset", required=True, help="dataset of this run's records, e.g. fashion-mnist")
    t5.add_argument("--protocol", required=True, help="linear protocol of this run's records, e.g. fast")
    t5.add_argument("--hardware", help="what the runs ran on (default: a description of this machine)")
    t5.add_argument("--budget", help="the pre-training budget of each run, for the header")
    t5.add_argument("--runs-dir", help="results records folder (default results/runs)")
    t5.add_argument("--out-md", help="write the markdown here, e.g. results/table5.md")
    t5.add_argument("--out-csv", help="write the table as CSV here, e.g. results/table5.csv")
    t5.set_defaults(run=table5)

    args = parser.parse_args(argv)
    return run_stage(lambda: args.run(args))


if __name__ == "__main__":
    sys.exit(main())
