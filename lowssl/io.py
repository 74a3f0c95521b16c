"""Files lowssl writes and reads: atomic writes, hashes, provenance, safe checkpoint loading.

Everything lowssl writes goes through a temp file in the destination folder and ``os.replace``, so a
killed run leaves either the old file or the new one, never half of one. Checkpoints hold only
tensors and plain data, so they load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import pickle
import pickletools
import re
import secrets
import shutil
import subprocess
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch

from lowssl.errors import BadInput, RunFailed


class CheckpointError(BadInput, RuntimeError):
    """A checkpoint could not be read: missing, truncated, corrupt or not weights-only."""


class DiskFullError(RunFailed, OSError):
    """A write ran out of disk space (ENOSPC): one line naming the disk, its free space and the file;
    :func:`atomic_write` has kept any previous version of the file."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path).absolute()
        disk = _mount_point(path)
        free_mib = shutil.disk_usage(disk).free / 2**20
        super().__init__(
            errno.ENOSPC,
            f"No space left on device: the disk mounted at {disk} ({free_mib:.1f} MiB free) could not hold "
            f"{path}; any previous version of it is kept. Free space there or write elsewhere",
            str(path),
        )

    def __str__(self) -> str:
        return self.strerror  # the message alone: OSError's own adds "[Errno 28]" and the path again


def _mount_point(path: Path) -> Path:
    """The mount point of the file system holding ``path`` (its nearest existing folder)."""
    while not path.exists():
        path = path.parent
    path = path.resolve()
    while not os.path.ismount(path):
        path = path.parent
    return path


def _ran_out_of_space(error: BaseException | None) -> bool:
    """Whether ``error`` or an error it was raised from is ENOSPC: torch.save's zip writer reports a
    failed write as a RuntimeError ("unexpected pos") raised while handling the OSError."""
    while error is not None:
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return True
        error = error.__cause__ or error.__context__
    return False


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(file)`` on a temp file next to ``path``, then rename it over ``path``. The file
    gets the mode ``open(path, "wb")`` would give a new file: 0666 less the umask (0644 under the
    usual 022, group-readable under a lab's 002), not the 0600 of :func:`tempfile.mkstemp`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    # O_EXCL: never opens a file that exists (64 random bits name it); the kernel applies the umask.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
    try:
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        if _ran_out_of_space(error):
            raise DiskFullError(path) from error
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


def first_non_finite(state: Any, name: str = "") -> str | None:
    """The dotted name of the first floating-point tensor in ``state`` (nested dicts, lists, tuples)
    holding a NaN or an infinity, or None. The trainers check what they save with it: an update that
    overflowed is caught before it is written over the last good checkpoint."""
    if isinstance(state, torch.Tensor):
        return name if state.is_floating_point() and not bool(torch.isfinite(state).all()) else None
    if isinstance(state, dict):
        items = state.items()
    elif isinstance(state, list | tuple):
        items = enumerate(state)
    else:
        return None
    for key, value in items:
        found = first_non_finite(value, f"{name}.{key}" if name else str(key))
        if found is not None:
            return found
    return None


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
    is refused is explained by :func:`_refusal`: corrupt, or well-formed but holding objects. A zip
    archive is checked first for what it declares it expands to (:func:`_check_declared_sizes`), so a zip
    bomb is refused before anything decompresses it, trusted or not. A safetensors file is read as one.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if _is_safetensors(path):  # tensors only, whatever its name: torch.load would try it as a pickle
        return _load_safetensors(path)
    if _is_zip(path):
        with _open_zip(path) as archive:
            _check_declared_sizes(path, archive)
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


def _is_safetensors(path: str | Path) -> bool:
    """A safetensors file, by its first bytes: the header's length (8 bytes, little-endian), then the
    header, a JSON object (no torch zip archive or pickle starts so)."""
    with open(path, "rb") as file:
        return file.read(9)[8:] == b"{"


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file (which holds nothing else, so nothing in it runs); the library
    checks the header (its length, each tensor's dtype, shape and byte range) before reading any."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError) as error:
        with open(path, "rb") as file:
            header_bytes = int.from_bytes(file.read(8), "little")
        raise CheckpointError(
            f"checkpoint {path} is a safetensors file (by its first bytes), corrupt or truncated "
            f"({_one_line(error)}; its header declares {header_bytes:,} bytes, the file holds "
            f"{path.stat().st_size:,}); re-download or re-create it"
        ) from error


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
        if _is_zip(path):
            with _open_zip(path) as archive:
                _check_declared_sizes(path, archive)
                names = [n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
                if not names:
                    raise ValueError("a zip archive without the data.pkl of torch.save")
                return _scan_pickle(io.BytesIO(archive.read(names[0])))[0]
        with open(path, "rb") as file:
            stream = _ReadsWithinFile(file)
            imports, legacy = _scan_pickle(stream)
            for _ in range(3 if legacy else 0):  # the protocol, system info, then the object itself
                imports += _scan_pickle(stream)[0]
            return imports
    except (ValueError, zipfile.BadZipFile, EOFError, OSError, IndexError, KeyError) as error:
        raise CheckpointError(_corrupt(path, error)) from error


# What a zip archive may declare before it is read. torch.save stores every member uncompressed
# (ZIP_STORED), so its members add up to the file's size; only a compressed member can declare more.
# data.pkl (the pickle that torch's pure-Python weights-only unpickler and the scan above read in full)
# measures 27 KB for a ViT-S/16 state dict, 39 KB for a ResNet50 one, 90-92 KB for ResNet50 and ViT-B
# training checkpoints with student, teacher and optimizer state: the limit is ~700x the largest.
MAX_PICKLE_BYTES = 64 << 20
MAX_EXPANSION = 100  # declared bytes of all members / bytes of the file: 1.0 for torch.save


def _is_zip(path: Path) -> bool:
    """A zip archive, by either test: Python's (an end record) or torch.load's (a local header first)."""
    with open(path, "rb") as file:
        return file.read(4) == b"PK\x03\x04" or zipfile.is_zipfile(file)


def _open_zip(path: Path) -> zipfile.ZipFile:
    """The archive, or "corrupt" when Python cannot read its directory: it is not left to torch's
    reader, which would decompress what this module could not check."""
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, ValueError, EOFError, OSError) as error:
        raise CheckpointError(_corrupt(path, error)) from error


def _check_declared_sizes(path: str | Path, archive: zipfile.ZipFile) -> None:
    """Refuse a zip archive that declares a larger data.pkl than :data:`MAX_PICKLE_BYTES`, or members
    adding up to more than :data:`MAX_EXPANSION` times the file (a zip bomb: a small file that
    decompresses to gigabytes in memory), from its directory alone, before anything is decompressed.
    No option lifts either limit: no torch.save checkpoint comes near them."""
    members = archive.infolist()
    pickles = [m for m in members if m.filename == "data.pkl" or m.filename.endswith("/data.pkl")]
    for member in pickles:
        if member.file_size > MAX_PICKLE_BYTES:
            raise CheckpointError(
                f"checkpoint {path}: its member {member.filename} declares {member.file_size:,} bytes, over "
                f"the {MAX_PICKLE_BYTES:,}-byte limit for the pickle of a checkpoint (tens of KB for a "
                "ResNet50 or ViT), so nothing was read. If the file is genuine, it holds large non-tensor "
                "data: save only its tensors with torch.save"
            )
    declared, size = sum(m.file_size for m in members), Path(path).stat().st_size
    if declared > MAX_EXPANSION * size:
        largest = max(members, key=lambda m: m.file_size)
        raise CheckpointError(
            f"checkpoint {path}: its {len(members)} members declare {declared:,} bytes uncompressed, over "
            f"{MAX_EXPANSION}x the file's {size:,} (the largest, {largest.filename}, declares "
            f"{largest.file_size:,} bytes in {largest.compress_size:,}), so nothing was decompressed. "
            "torch.save writes members uncompressed: if the file is genuine, re-create it with torch.save"
        )


class _ReadsWithinFile:
    """A binary file whose reads never ask for more than the bytes left in it. A pickle's length fields
    are data from the file: a read of the length a hostile file declares (terabytes) would allocate it
    before finding the file shorter. The short read that comes back is a truncated pickle, as it is."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        self._size = os.fstat(file.fileno()).st_size

    def read(self, size: int | None = -1) -> bytes:
        left = max(self._size - self._file.tell(), 0)
        return self._file.read(left if size is None or size < 0 else min(size, left))

    def readline(self) -> bytes:
        return self._file.readline()  # ends at a newline or the end of the file: within it either way

    def tell(self) -> int:
        return self._file.tell()


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


# A Detectron2 weight pickle (the model zoo's, or what ``python -m lowssl.detection convert`` writes) is a dict
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
