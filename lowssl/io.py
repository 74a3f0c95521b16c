"""Files lowssl writes and reads: atomic writes, hashes, provenance, safe checkpoint loading.

Everything lowssl writes goes through a temp file in the destination folder and ``os.replace``, so a
killed run leaves either the old file or the new one, never half of one. Checkpoints hold only
tensors and plain data, so they load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import subprocess
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch


class CheckpointError(RuntimeError):
    """A checkpoint could not be read: missing, truncated, corrupt or not weights-only."""


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(file)`` on a temp file next to ``path``, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda file: file.write(text.encode()))


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    return atomic_write(path, lambda file: torch.save(obj, file))


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def git_commit(repo: str | Path | None = None) -> str:
    """The commit lowssl runs from, with ``+dirty`` for uncommitted changes; ``unknown`` outside git."""
    cwd = Path(repo) if repo else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def load_checkpoint(path: str | Path, trust: bool = False, safe_globals: list | None = None) -> Any:
    """Load a checkpoint on the CPU, weights-only unless ``trust`` is set explicitly.

    A checkpoint from elsewhere is an untrusted pickle: ``weights_only=True`` refuses code
    execution. ``safe_globals`` allow-lists the few plain classes known formats carry.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        if trust:
            return torch.load(path, map_location="cpu", weights_only=False)
        with torch.serialization.safe_globals(safe_globals or []):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "weights_only" in str(error) or "Weights only load failed" in str(error):
            raise CheckpointError(
                f"checkpoint {path} contains objects other than tensors and plain data, so it was not "
                f"loaded (weights_only=True). Only if you trust where it came from, pass "
                f"--trust-checkpoint (trust=True) to load it as a full pickle. Details: {str(error)[:500]}"
            ) from error
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated: {error}") from error
    except (RuntimeError, EOFError, zipfile.BadZipFile, io.UnsupportedOperation, ValueError) as error:
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated ({type(error).__name__}: {str(error)[:300]}); "
            "re-download or re-create it"
        ) from error
