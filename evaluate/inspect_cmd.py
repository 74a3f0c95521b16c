"""``python -m evaluate inspect PATH``: what a checkpoint holds and how it maps onto a lowssl backbone.

Prints a readable report and, as its last line, one JSON object (format, arch, branch, loaded,
missing, unexpected) for scripts. Exit code 0: every backbone key loads; 1: backbone keys are missing;
2: the file cannot be read or its layout / architecture cannot be determined (one-line error, no
traceback).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from evaluate.adapters import Adapted, AdapterError, formats, get_format, load_pretrained
from lowssl.backbones import available
from lowssl.io import CheckpointError

_SHOWN = 20  # keys listed per category; the counts are always complete


def _listing(keys: list[str]) -> str:
    more = f" ... ({len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else ""
    return ", ".join(keys[:_SHOWN]) + more


def format_report(adapted: Adapted, path: str | Path) -> str:
    fmt = get_format(adapted.format)
    also = [name for name in adapted.matched_formats if name != adapted.format]
    default = " (default)" if adapted.branch == fmt.default_branch else ""
    lines = [
        f"checkpoint  {path}",
        f"sha256      {adapted.checkpoint_sha256}",
        f"format      {fmt.name}: {fmt.source}" + (f" [fits equally: {', '.join(also)}]" if also else ""),
        f"arch        {adapted.arch}",
        f"branch      {adapted.branch}{default}; branches: {', '.join(fmt.branches)}",
        f"backbone    {adapted.loaded} keys loaded, {len(adapted.missing)} missing, "
        f"{len(adapted.unexpected)} unexpected",
        f"dropped     {len(adapted.dropped)} keys"
        + (f": {_listing(adapted.dropped)}" if adapted.dropped else ""),
        "head        "
        + (
            f"{len(adapted.head_state)} tensors: {_listing(list(adapted.head_state))}"
            if adapted.head_state
            else "none"
        ),
    ]
    if adapted.missing:
        lines.append(f"MISSING     {_listing(adapted.missing)}")
    if adapted.unexpected:
        lines.append(f"unexpected  {_listing(adapted.unexpected)}")
    lines.append("notes")
    lines.extend(f"  - {note}" for note in adapted.notes)
    return "\n".join(lines)


def inspect_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m evaluate inspect",
        description="Report how a pre-training checkpoint maps onto a lowssl backbone. Exit code 0: every "
        "backbone key loads; 1: backbone keys are missing; 2: the file or its layout cannot be read.",
    )
    parser.add_argument("path", type=Path)
    parser.add_argument("--arch", choices=available(), help="architecture (default: recorded or inferred)")
    parser.add_argument(
        "--format",
        dest="fmt",
        choices=[fmt.name for fmt in formats()],
        help="checkpoint layout (default: detected from the keys)",
    )
    parser.add_argument("--branch", help="student / teacher / query ... (default: the format's default)")
    parser.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="load the file as a full pickle, which can run arbitrary code: only for files you trust",
    )
    args = parser.parse_args(argv)
    try:
        adapted = load_pretrained(
            args.path, arch=args.arch, fmt=args.fmt, branch=args.branch, trust=args.trust_checkpoint
        )
    except (AdapterError, CheckpointError) as error:
        print("error: " + " ".join(str(error).split()), file=sys.stderr)  # one line, whatever torch said
        return 2
    print(format_report(adapted, args.path))
    print(json.dumps(adapted.summary()))
    return 1 if adapted.missing else 0
