import os

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
