"""benchmarks/gpu_check.py, issue 29's GPU check: its arithmetic, and its plumbing end to end on the CPU.

The whole small mode (two backbones, two precisions, two data paths) is a manual check:
``OUT=/tmp/gpu_check benchmarks/gpu_check.sh --small --budget-s 900`` (7.5 min on the shared 2-core
machine at load ~10; the default 380 s budget would leave parts out there).
"""

import csv
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from lowssl.benchmarks.gpu_check import FULL, SMALL, main, window_rates, workers_that_fit_shared_memory

REPO = Path(__file__).resolve().parent.parent


def test_the_window_leaves_out_the_warm_up_and_weighs_steps_by_their_time():
    # SMALL: batch 8, warm-up 1 step. Step 1 (left out) waited long; steps 2-3 took 1 s and 3 s.
    rows = [
        {"step": "1", "images_per_s": "0.8", "data_wait_s": "9.0"},
        {"step": "2", "images_per_s": "8.0", "data_wait_s": "0.5"},
        {"step": "3", "images_per_s": str(8 / 3), "data_wait_s": "0.5"},
    ]
    rates = window_rates(rows, SMALL)
    assert rates["steps_measured"] == 2
    assert rates["images_per_s"] == pytest.approx(16 / 4)  # not the mean of the rates (5.33)
    assert rates["data_wait_fraction"] == pytest.approx(1.0 / 4)


def test_without_a_gpu_the_full_check_refuses_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert main(["--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "error: no CUDA device here; --small checks the plumbing on the CPU\n"


@pytest.mark.slow  # a real pretrain run, the step benchmark and the loader: 34 s (load 3) to 57 s (load 10) here
def test_the_small_check_measures_a_real_run_the_step_and_the_loader(tmp_path):
    command = [sys.executable, "-m", "lowssl.benchmarks.gpu_check", "--small", "--out", str(tmp_path)]
    command += ["--backbones", "resnet18", "--precisions", "fp32", "--data-paths", "cpu multi-crop"]
    subprocess.run(command, cwd=REPO, check=True, timeout=300)
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    (row,) = report["rows"]
    assert row["status"] == "ok" and row["steps_measured"] == SMALL.steps - SMALL.warmup
    assert row["images_per_s"] > 0 and 0 <= row["data_wait_fraction"] <= 1
    assert row["step_alone_images_per_s"] > 0 and row["loader_alone_images_per_s"] > 0
    assert report["machine"]["cpu_count"] >= 1 and report["machine"]["torch"]
    steps = list(csv.DictReader(open(tmp_path / "gpu_check_steps.csv")))
    assert [int(step["step"]) for step in steps] == [1, 2, 3]
    assert all(0 <= float(step["data_wait_fraction"]) <= 1 for step in steps)
    table = (tmp_path / "gpu_check.md").read_text()
    assert "| resnet18 | fp32 | cpu multi-crop |" in table


def test_loader_workers_are_capped_by_the_shared_memory_their_batches_need():
    full = replace(FULL, workers=14)  # a 16-core machine
    batch_bytes = 128 * 3 * (2 * 224**2 + 6 * 128**2) * 4  # float32 views of the ours recipe: 291 MiB
    assert workers_that_fit_shared_memory(full, 64 * 2**30) == 14
    assert workers_that_fit_shared_memory(full, 8 * 2**30) == 8 * 2**30 // (5 * batch_bytes) == 5
    assert workers_that_fit_shared_memory(full, 64 * 2**20) == 1  # Docker's default /dev/shm
