"""``python -m lowssl.evaluate inspect --checkpoint PATH``: what a checkpoint holds and how it maps onto a lowssl backbone.

Prints a readable report and, as its last line, one JSON object (format, arch, branch, loaded,
missing, unexpected) for scripts. Exit code 0: every backbone key loads; 1: backbone keys are missing;
2: the file cannot be read or its layout / architecture cannot be determined (one-line error, no
traceback).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from lowssl.checkpoints import OpenedCheckpoint, add_checkpoint_arguments, get_format, open_from_arguments
from lowssl.checkpoints.cli import CHECKPOINT_FLAG
from lowssl.cli import StageParser, run_stage

_SHOWN = 20  # keys listed per category; the counts are always complete


def _listing(keys: list[str]) -> str:
    more = f" ... ({len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else ""
    return ", ".join(keys[:_SHOWN]) + more


def format_report(opened: OpenedCheckpoint) -> str:
    fmt = get_format(opened.format)
    also = [name for name in opened.matched_formats if name != opened.format]
    default = " (default)" if opened.branch == fmt.default_branch else ""
    lines = [
        f"checkpoint  {opened.path}",
        f"sha256      {opened.checkpoint_sha256}",
        f"format      {fmt.name}: {fmt.source}" + (f" [fits equally: {', '.join(also)}]" if also else ""),
        f"arch        {opened.arch}",
        f"branch      {opened.branch}{default}; branches: {', '.join(fmt.branches)}",
        f"backbone    {opened.loaded} keys loaded, {len(opened.missing)} missing, "
        f"{len(opened.unexpected)} unexpected",
        f"dropped     {len(opened.dropped)} keys"
        + (f": {_listing(opened.dropped)}" if opened.dropped else ""),
        "head        "
        + (
            f"{len(opened.head_state)} tensors: {_listing(list(opened.head_state))}"
            if opened.head_state
            else "none"
        ),
    ]
    if opened.missing:
        lines.append(f"MISSING     {_listing(opened.missing)}")
    if opened.unexpected:
        lines.append(f"unexpected  {_listing(opened.unexpected)}")
    lines.append("notes")
    lines.extend(f"  - {note}" for note in opened.notes)
    return "\n".join(lines)


def inspect_main(argv: Sequence[str] | None = None) -> int:
    parser = StageParser(
        prog="python -m lowssl.evaluate inspect",
        description="Report how a pre-training checkpoint maps onto a lowssl backbone. Exit code 0: every "
        "backbone key loads; 1: backbone keys are missing; 2: the file or its layout cannot be read.",
    )
    add_checkpoint_arguments(parser)
    parser.formerly_positional(CHECKPOINT_FLAG)
    args = parser.parse_args(argv)
    return run_stage(lambda: _inspect(args))  # an unreadable file: one line, whatever torch said


def _inspect(args: argparse.Namespace) -> int:
    opened = open_from_arguments(args)
    print(format_report(opened))
    print(json.dumps(opened.summary()))
    return 1 if opened.missing else 0
