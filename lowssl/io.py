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
import pickletools
import re
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


def remove_stale_temp_files(folder: str | Path) -> list[Path]:
    """Delete the temp files :func:`atomic_write` leaves in ``folder`` when its process is killed
    mid-write (``.<name>.<random>.tmp``; the file they were for is whole). Call it only where no other
    process is writing into ``folder``: a run's own folder when the run (re)starts."""
    stale = sorted(Path(folder).glob(".*.tmp")) if Path(folder).is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


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


#: What "pass --trust-checkpoint" means everywhere: the file is then unpickled in full, which can run code.
TRUST_ADVICE = (
    "Only if you trust where it came from, pass --trust-checkpoint (trust=True) to load it as a full "
    "pickle, which can run code"
)


def load_checkpoint(path: str | Path, trust: bool = False, safe_globals: list | None = None) -> Any:
    """Load a checkpoint on the CPU, weights-only unless ``trust`` is set explicitly.

    A checkpoint from elsewhere is an untrusted pickle: ``weights_only=True`` refuses code
    execution. ``safe_globals`` allow-lists the few plain classes known formats carry. A file that
    is refused is explained by :func:`_refusal`: corrupt, or well-formed but holding objects.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if trust:
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as error:  # a full unpickle of a broken file can fail with any error type
            raise CheckpointError(_corrupt(path, error)) from error
    try:
        with torch.serialization.safe_globals(safe_globals or []):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch's weights-only unpickler raises many types on malformed bytes
        raise _refusal(path, error) from error


def _corrupt(path: Path, error: BaseException) -> str:
    return (
        f"checkpoint {path} is corrupt or truncated ({type(error).__name__}: {_one_line(error)[:300]}); "
        "re-download or re-create it"
    )


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())  # torch's messages span lines; an error here is one line


def _refusal(path: Path, error: BaseException) -> CheckpointError:
    """Why a weights-only load failed: a file that is not a well-formed archive or pickle is corrupt;
    only a well-formed pickle that torch's unpickler refused is one that trust could open."""
    try:
        imports = pickle_imports(path)
    except CheckpointError as malformed:
        return malformed
    if not isinstance(error, pickle.UnpicklingError):
        return CheckpointError(_corrupt(path, error))
    foreign = sorted(set(imports) - _torch_allowed_globals())
    held = f" ({', '.join(foreign[:8])}{' ...' if len(foreign) > 8 else ''})" if foreign else ""
    return CheckpointError(
        f"checkpoint {path} contains objects other than tensors and plain data{held}, so it was not "
        f"loaded (weights_only=True). {TRUST_ADVICE}. Details: {_one_line(error)[:500]}"
    )


def _torch_allowed_globals() -> set[str]:
    """What torch's weights-only unpickler rebuilds by itself: not worth naming in a refusal. Its
    list is private, so it is read defensively; this only words a message, it decides nothing."""
    try:
        from torch._weights_only_unpickler import _get_allowed_globals

        return set(_get_allowed_globals())
    except (ImportError, AttributeError, TypeError):
        return {"collections.OrderedDict", "torch._utils._rebuild_tensor_v2"}


# torch.save's legacy (pre-zip) format: pickles of this number, the protocol, system info, the object.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_STRING_OPS = {
    "STRING",
    "BINSTRING",
    "SHORT_BINSTRING",
    "UNICODE",
    "BINUNICODE",
    "SHORT_BINUNICODE",
    "BINUNICODE8",
}


def pickle_imports(path: str | Path) -> list[str]:
    """The ``module.name`` globals the pickle in ``path`` (a torch zip archive, torch's legacy format
    or a plain pickle) would import, read with :mod:`pickletools` without unpickling anything.

    Only explains a refusal; the safety of a load rests on the restricted unpicklers, never on this.
    A file that is not a well-formed archive or pickle raises :class:`CheckpointError` ("corrupt").
    """
    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
                if not names:
                    raise ValueError("a zip archive without the data.pkl of torch.save")
                return _scan_pickle(io.BytesIO(archive.read(names[0])))[0]
        with open(path, "rb") as file:
            imports, legacy = _scan_pickle(file)
            for _ in range(3 if legacy else 0):  # the protocol, system info, then the object itself
                imports += _scan_pickle(file)[0]
            return imports
    except (ValueError, zipfile.BadZipFile, EOFError, OSError, IndexError, KeyError) as error:
        raise CheckpointError(_corrupt(path, error)) from error


def _scan_pickle(stream: BinaryIO) -> tuple[list[str], bool]:
    """(globals imported, whether the pickle is the legacy-format magic number) of the next pickle
    in ``stream``; ValueError when its opcodes are not a complete pickle. STACK_GLOBAL takes its
    names from the stack: the last two values pushed, tracked through the memo."""
    imports: list[str] = []
    pushed: list[Any] = []  # values pushed so far: strings where known, None for anything else
    memo: dict[int, Any] = {}
    magic = False
    for opcode, arg, _ in pickletools.genops(stream):
        name = opcode.name
        if name == "GLOBAL":
            imports.append(_python3_name(arg.replace(" ", ".")))
        elif name == "STACK_GLOBAL":
            module, attribute = pushed[-2:] if len(pushed) >= 2 else (None, None)
            imports.append(_python3_name(f"{module}.{attribute}"))
            pushed[-2:] = [None]
        elif name == "MEMOIZE":
            memo[len(memo)] = pushed[-1] if pushed else None
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[arg] = pushed[-1] if pushed else None
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            pushed.append(memo.get(arg))
        elif name in _STRING_OPS:
            pushed.append(arg)
        elif name != "STOP":
            pushed.append(None)
            magic = magic or (name in ("LONG1", "LONG4", "LONG") and arg == _LEGACY_MAGIC)
    return imports, magic


def _python3_name(name: str) -> str:
    return name.replace("__builtin__.", "builtins.", 1)  # how protocol 2 names Python 3's builtins


# A Detectron2 weight pickle (the model zoo's, or what ``python -m detection convert`` writes) is a dict
# of numpy arrays and plain values. These are all the globals such a file needs: numpy's array and
# scalar rebuilders (protocol 2: _reconstruct + ndarray + dtype; protocol 5: _frombuffer), dtype,
# OrderedDict, and _codecs.encode (how protocol-2 pickles written by Python 3 store bytes).
WEIGHTS_PICKLE_GLOBALS = frozenset(
    {
        "numpy._core.multiarray._reconstruct",
        "numpy._core.multiarray.scalar",
        "numpy._core.numeric._frombuffer",
        "numpy.ndarray",
        "numpy.dtype",
        "collections.OrderedDict",
        "_codecs.encode",
    }
)


class _WeightsUnpickler(pickle.Unpickler):
    """Imports only :data:`WEIGHTS_PICKLE_GLOBALS`; persistent ids (torch storages) are refused too."""

    def find_class(self, module: str, name: str) -> Any:
        # numpy 2 renamed numpy.core to numpy._core; pickles written by numpy 1 name the old module.
        canonical = re.sub(r"^numpy\.core(\.|$)", r"numpy._core\1", module)
        if f"{canonical}.{name}" not in WEIGHTS_PICKLE_GLOBALS:
            raise _ForeignGlobal(f"{module}.{name}")
        return super().find_class(canonical, name)

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids (torch storages) are not part of a weights pickle")


class _ForeignGlobal(pickle.UnpicklingError):
    pass


def load_weights_pickle(path: str | Path, trust: bool = False) -> Any:
    """A Detectron2-style weights pickle, loaded with a restricted unpickler (numpy arrays and plain
    data only, as Detectron2 reads it: ``encoding="latin1"``); ``trust`` unpickles it in full."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    with open(path, "rb") as file:
        try:
            if trust:
                return pickle.load(file, encoding="latin1")
            return _WeightsUnpickler(file, encoding="latin1").load()
        except _ForeignGlobal as error:
            raise CheckpointError(
                f"weights file {path} would import {error}, which is not a numpy array or plain data, so it "
                f"was not loaded. {TRUST_ADVICE}."
            ) from error
        except Exception as error:  # malformed pickles fail with many error types
            raise CheckpointError(_corrupt(path, error).replace("checkpoint", "weights file", 1)) from error
