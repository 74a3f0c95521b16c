import os

import pytest
import torch

# Tests are CPU-only and small; two threads match the CI machine and keep timings stable.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def runs_dir(tmp_path):
    return tmp_path / "runs"
