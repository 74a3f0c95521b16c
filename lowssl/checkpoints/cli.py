"""The checkpoint options every stage's command line shares (evaluate, semisup, detection): which file,
which architecture, format and branch, and whether to trust it (the arguments of
:func:`lowssl.checkpoints.open_checkpoint`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from lowssl.backbones import available
from lowssl.checkpoints.formats import formats
from lowssl.checkpoints.reader import OpenedCheckpoint, open_checkpoint

#: ``--checkpoint`` and what it names, for :meth:`lowssl.cli.StageParser.formerly_positional`: ``inspect``,
#: ``export`` and ``convert`` took the checkpoint as a positional word before (issue 27).
CHECKPOINT_FLAG = ("--checkpoint", "the checkpoint")


def add_trust_argument(parser: argparse.ArgumentParser, what: str = "the checkpoint") -> None:
    parser.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help=f"load {what} as a full pickle, which can run code: only files you trust",
    )


def add_checkpoint_arguments(parser: argparse.ArgumentParser, checkpoint_in=None) -> None:
    """``--checkpoint PATH`` (into ``checkpoint_in``, e.g. a group exclusive with ``--random-init``;
    required when ``checkpoint_in`` is None); then ``--arch``, ``--format`` (as ``checkpoint_format``),
    ``--branch`` and ``--trust-checkpoint``."""
    what = "any supported checkpoint (python -m lowssl.evaluate inspect --checkpoint PATH)"
    if checkpoint_in is None:
        parser.add_argument("--checkpoint", type=Path, required=True, help=what)
    else:
        checkpoint_in.add_argument("--checkpoint", type=Path, help=what)
    parser.add_argument(
        "--arch",
        choices=available(),
        help="backbone (default: the one the checkpoint records, else inferred from its keys)",
    )
    parser.add_argument(
        "--format",
        dest="checkpoint_format",
        choices=[fmt.name for fmt in formats()],
        help="force a checkpoint layout (default: detected from the keys; docs/checkpoints.md)",
    )
    parser.add_argument("--branch", help="student / teacher / query ... (default: the format's default)")
    add_trust_argument(parser)


def open_from_arguments(args) -> OpenedCheckpoint:
    """:func:`open_checkpoint` with what :func:`add_checkpoint_arguments` parsed into ``args``."""
    return open_checkpoint(
        args.checkpoint,
        fmt=args.checkpoint_format,
        branch=args.branch,
        arch=args.arch,
        trust=args.trust_checkpoint,
    )
