"""One live process per run folder: ``<run folder>/.run.lock``, held with POSIX ``lockf`` for the run.

Two runs started on one folder would both resume its ``last.pth``, overwrite each other's
checkpoints and interleave their rows in ``log.csv``; the second one is refused instead. The lock is
the kernel's (``lockf``, as the records use, which NFS honours too): it goes with its process however
that ends, kill -9 included, so the lock of a dead run is taken over, with a note. The file holds
its owner (pid, host, start time) for the messages; a run that ends empties it, one that is killed
leaves its owner there.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from lowssl.errors import BadInput

LOCK_NAME = ".run.lock"
_HELD: set[Path] = set()  # lockf locks are per process: a second lock in this process would succeed


class RunFolderBusy(BadInput, RuntimeError):
    """Another live process runs in this folder."""


@contextmanager
def run_folder_lock(folder: str | Path, enabled: bool = True) -> Iterator[None]:
    """Hold ``folder`` (created if need be) for the ``with`` block, or raise :class:`RunFolderBusy`.

    ``enabled=False`` (the other ranks of a DDP run) holds nothing: rank 0 holds it for the run.
    """
    if not enabled:
        yield
        return
    folder = Path(folder).resolve()
    if folder in _HELD:
        raise RunFolderBusy(_busy(folder, f"this process (pid {os.getpid()})"))
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_NAME, "a+") as lock:
        try:
            fcntl.lockf(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EACCES, errno.EAGAIN):
                raise
            raise RunFolderBusy(_busy(folder, _owner(lock) or "another process")) from None
        previous = _owner(lock)
        if previous:  # we hold the lock, so its owner's process has ended without releasing it
            print(
                f"{folder}: took over the lock of {previous}, which is no longer running",
                file=sys.stderr,
                flush=True,
            )
        lock.truncate(0)
        started = datetime.now().astimezone().isoformat(timespec="seconds")
        lock.write(f"pid {os.getpid()} on host {socket.gethostname()} (started {started})\n")
        lock.flush()
        _HELD.add(folder)
        try:
            yield
        finally:
            _HELD.discard(folder)
            lock.truncate(0)  # ended, not killed: nobody to take over from; closing releases the lock


def _owner(lock) -> str:
    """The owner the lock file names, as one short line (it is only shown, never parsed)."""
    lock.seek(0)
    return " ".join(lock.read(500).split())


def _busy(folder: Path, owner: str) -> str:
    return (
        f"run folder {folder} is in use by {owner}: wait for that run to end, or give this one "
        "another output folder"
    )
