"""Checkpoints, in one place: lowssl's own schema (:mod:`~lowssl.checkpoints.schema`), the third-party
layouts (:mod:`~lowssl.checkpoints.formats`), reading any of them once
(:func:`~lowssl.checkpoints.reader.open_checkpoint`) and the command-line options every stage shares
(:mod:`~lowssl.checkpoints.cli`). Layouts: docs/checkpoints.md."""

from lowssl.checkpoints.cli import add_checkpoint_arguments, add_trust_argument, open_from_arguments
from lowssl.checkpoints.formats import (
    CheckpointFormat,
    CheckpointLayoutError,
    formats,
    get_format,
    register_format,
)
from lowssl.checkpoints.reader import OpenedCheckpoint, open_checkpoint
from lowssl.checkpoints.schema import Provenance

__all__ = [
    "CheckpointFormat",
    "CheckpointLayoutError",
    "OpenedCheckpoint",
    "Provenance",
    "add_checkpoint_arguments",
    "add_trust_argument",
    "formats",
    "get_format",
    "open_checkpoint",
    "open_from_arguments",
    "register_format",
]
