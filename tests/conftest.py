import contextlib
import os
import subprocess
from pathlib import Path

import pytest
import torch

# Tests are CPU-only and small; two threads match the CI machine and keep timings stable.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def runs_dir(tmp_path):
    return tmp_path / "runs"


@pytest.fixture
def one_thread():
    """One torch thread for the test: the view sampler runs in DataLoader workers, which use one,
    and on tiny views a second thread only adds hand-off cost (16x slower on a shared 2-core machine).
    Modules that sample views use it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def one_thread_per_module():
    """One torch thread for a whole module of Detectron2 tests: Mask R-CNN runs many small ops, and on
    2 CPU cores shared with other jobs two OpenMP threads spin against each other (measured here:
    ResNet18 forward + backward on 4 x 144 px takes 0.5 s on one thread, 3.6-4.4 s on two)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def torch_loads(monkeypatch):
    """The files ``torch.load`` reads during the test, in order (a checkpoint read twice shows twice)."""
    reads: list[str] = []
    load = torch.load

    def counting_load(file, *args, **kwargs):
        reads.append(str(file))
        return load(file, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting_load)
    return reads


@contextlib.contextmanager
def small_tmpfs(folder: Path):
    """A real 1 MiB tmpfs at ``folder`` (needs root; the test is skipped where mount is refused),
    unmounted afterwards: a disk that fills up, for the disk-full tests."""
    folder.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


def fill_disk(folder: Path) -> None:
    """Fill the disk of ``folder`` to its last byte."""
    with open(folder / "filler", "wb", buffering=0) as filler, contextlib.suppress(OSError):
        while filler.write(b"\0" * 4096):
            pass
