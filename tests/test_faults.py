"""Faults a run meets on its own (issue 26, cases 9 and 10): an update that overflows the weights, and a
disk that fills up. Real runs, real processes, a real (small) tmpfs.
"""

import csv
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import fill_disk, small_tmpfs
from test_pretrain_engine import REPO, TINY, tiny_overrides

from lowssl.config import load
from lowssl.pretrain.config import PretrainConfig
from lowssl.pretrain.train import train
from lowssl.semisup.__main__ import main as semisup_main
from lowssl.semisup.run_state import NonFiniteWeightsError
from lowssl.semisup.train import FinetuneArgs, finetune

pytestmark = pytest.mark.usefixtures("one_thread")

# One thread in the subprocesses: no OpenMP spinning on a shared machine (tests/test_reliability.py).
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
# The run of the issue: the tiny ResNet18 preset on 64 Fashion-MNIST images, a checkpoint every step.
FASHION = REPO / "pretrain/configs/tiny/dino_resnet18_ours.yaml"


def _fashion_overrides(tmp_path: Path, **extra) -> list[str]:
    values = {
        "data.subset": 64,
        "batch_size": 16,
        "data.num_workers": 0,
        "checkpoint.every_steps": 1,
        "max_steps": 6,
        "output_dir": tmp_path / "run",
        "records_dir": tmp_path / "records",
        **extra,
    }
    return [f"{key}={value}" for key, value in values.items()]


def _pretrain(*arguments) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "lowssl.pretrain", *arguments]
    return subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)


def _error_line(stderr: str) -> str:
    """The run's error message: one line (tqdm's progress shares stderr, on lines of its own)."""
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [line[line.index("error: ") :] for line in stderr.splitlines() if "error: " in line]
    assert len(errors) == 1, stderr[-3000:]
    return errors[0]


def _non_finite(tensors: dict) -> list[str]:
    return [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]


def test_a_nan_stop_names_a_finite_checkpoint_that_resumes(tmp_path):
    """Before: the step whose update overflowed was saved before the next loss check, so the
    last.pth the NaN stop named had 39 of its 120 student tensors non-finite, and resuming it at the
    preset's LR was NaN at once. Now that save is refused and the previous last.pth is named."""
    done = _pretrain("--config", str(FASHION), *_fashion_overrides(tmp_path, **{"optim.base_lr": 1e30}))
    message = _error_line(done.stderr)
    assert done.returncode == 1
    assert re.search(r"is NaN or infinite after the update of global step \d+ .*optim\.base_lr", message)
    named = Path(re.search(r"the last good checkpoint is (\S+\.pth)$", message)[1])
    state = torch.load(named, weights_only=True)
    assert len(state["student_backbone"]) == 120
    for part in ("student_backbone", "teacher_backbone", "method_state"):
        assert _non_finite(state[part]) == [], part

    # the preset's LR from that checkpoint: the next step's loss is finite, and so is what it saved
    step = state["global_step"]
    train(load(PretrainConfig, FASHION, _fashion_overrides(tmp_path, max_steps=step + 1)))
    last_row = list(csv.DictReader(open(tmp_path / "run/log.csv")))[-1]
    assert int(last_row["step"]) == step + 1 and math.isfinite(float(last_row["loss"]))
    resumed = torch.load(tmp_path / "run/last.pth", weights_only=True)
    assert resumed["global_step"] == step + 1 and _non_finite(resumed["method_state"]) == []


def _semisup(tmp_path: Path, *overrides: str, batch_size: int) -> list[str]:
    """Random-init ResNet18 on the synthetic set's 10 % subset (6 labelled images)."""
    return [
        "finetune",
        "--random-init",
        "--arch",
        "resnet18",
        "--dataset",
        "synthetic",
        "--subset",
        "10pct",
        "--protocol",
        "tiny",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--output-dir",
        str(tmp_path / "run"),
        "--records-dir",
        str(tmp_path / "records"),
        "max_eval_images=8",
        f"batch_size={batch_size}",
        "epochs=3",
        *overrides,
    ]


def test_semisup_nan_stops_name_only_a_checkpoint_that_exists(tmp_path, capsys):
    """Before: a NaN in the first epoch named run/last.pth, which no save had written yet."""
    # batch 4: two steps an epoch, the second one's loss NaN, before any save
    assert semisup_main(_semisup(tmp_path / "a", "base_lr=1e30", batch_size=4)) == 1
    message = _error_line(capsys.readouterr().err)
    assert message.endswith("the run stopped; no checkpoint was written yet")
    assert not (tmp_path / "a/run/last.pth").exists()
    # batch 6: one step an epoch; the epoch's save holds huge but finite weights, whose first loss is
    # NaN: the file exists and is finite, and the message says that resuming it meets the same loss
    assert semisup_main(_semisup(tmp_path / "b", "base_lr=1e30", batch_size=6)) == 1
    message = _error_line(capsys.readouterr().err)
    last = tmp_path / "b/run/last.pth"
    assert f"its last checkpoint, {last}, holds the weights this loss was computed from" in message
    assert _non_finite(torch.load(last, weights_only=True)["model"]) == []


def test_semisup_never_saves_non_finite_weights_and_resumes_from_the_last_good_file(tmp_path, monkeypatch):
    """An update that leaves a weight infinite (here: the second optimiser step, made to) stops the
    run before the epoch is evaluated or saved; the last.pth it names is the previous, finite one, and
    resuming it trains a finite step."""
    args = dict(
        random_init=True,
        arch="resnet18",
        dataset="synthetic",
        subset="10pct",
        protocol="tiny",
        overrides=["batch_size=6", "epochs=3"],
        max_eval_images=8,
        workers=0,
        device="cpu",
        output_dir=str(tmp_path / "run"),
        records_dir=str(tmp_path / "records"),
    )
    step = torch.optim.SGD.step
    steps = {"n": 0}

    def second_step_overflows(self, *a, **k):
        result = step(self, *a, **k)
        steps["n"] += 1
        if steps["n"] == 2:
            with torch.no_grad():
                self.param_groups[0]["params"][-1].fill_(float("inf"))
        return result

    monkeypatch.setattr(torch.optim.SGD, "step", second_step_overflows)
    last = tmp_path / "run/last.pth"
    with pytest.raises(NonFiniteWeightsError) as stopped:
        finetune(FinetuneArgs(**args))
    assert re.fullmatch(
        rf"model\.\S+ is NaN or infinite after optimiser step 2 \(lower base_lr\)\. The run stopped "
        rf"without saving this state to last\.pth; the last good checkpoint is {re.escape(str(last))}",
        str(stopped.value),
    )
    state = torch.load(last, weights_only=True)
    assert state["global_step"] == 1 and _non_finite(state["model"]) == []

    monkeypatch.setattr(torch.optim.SGD, "step", step)
    finetune(FinetuneArgs(**args, max_steps=2))  # a NaN loss would raise
    assert _non_finite(torch.load(last, weights_only=True)["model"]) == []


def test_pretrain_on_a_full_disk_stops_with_one_line_naming_the_disk_and_the_file(tmp_path):
    """Before: a RuntimeError "[enforce fail at inline_container.cc:672] unexpected pos" traceback."""
    with small_tmpfs(tmp_path / "disk") as disk:
        overrides = tiny_overrides(disk, max_steps=1, **{"checkpoint.every_steps": 1})
        done = _pretrain("--config", str(TINY["dino"]), *overrides)
        message = _error_line(done.stderr)
        assert done.returncode == 1
        assert re.fullmatch(
            rf"error: No space left on device: the disk mounted at {re.escape(str(disk))} \(\d+\.\d MiB "
            rf"free\) could not hold {re.escape(str(disk / 'run/last.pth'))}; any previous version of it "
            "is kept. Free space there or write elsewhere",
            message,
        )
        assert not list((disk / "run").glob("*.pth")) and not list((disk / "run").glob(".*.tmp"))


def test_evaluate_on_a_full_records_disk_prints_and_keeps_the_result(tmp_path):
    """Before: an ENOSPC traceback, and the computed result was neither printed nor saved."""
    common = ["--raw-pixels", "--protocol", "knn_tiny", "--dataset", "synthetic", "--workers", "0"]
    cache = ["--cache-dir", str(tmp_path / "feature-cache")]  # features: on a disk with room
    command = [sys.executable, "-m", "lowssl.evaluate", "knn", *common, *cache, "--device", "cpu"]
    with small_tmpfs(tmp_path / "disk") as disk:
        fill_disk(disk)
        # the run folder on another disk: the result is printed and kept there
        done = subprocess.run(
            [*command, "--output-dir", str(tmp_path / "out"), "--records-dir", str(disk / "runs")],
            cwd=REPO,
            env=ENV,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 1
        result = re.search(
            r"knn_top1 (\S+), knn1_top1 (\S+) \(records NOT written; result: (\S+\.json)\)", done.stdout
        )
        assert result, done.stdout
        kept = json.loads(Path(result[3]).read_text())["metrics"]
        assert f"{kept['knn_top1']:.2f}" == result[1] and f"{kept['knn1_top1']:.2f}" == result[2]
        records = disk / "runs" / "eval-raw-pixels-pixels-none.csv"
        assert _error_line(done.stderr).startswith(
            f"error: could not write the results records {records}: No space left on device: the disk "
            f"mounted at {disk} (0.0 MiB free)"
        )
        # the run folder on the full disk too: the printed line is all that is left, and it says so
        done = subprocess.run(
            [*command, "--output-dir", str(disk / "out"), "--records-dir", str(disk / "runs")],
            cwd=REPO,
            env=ENV,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 1 and "Traceback" not in done.stderr
        assert (
            "(records NOT written; result file NOT written; this printed line is all that is kept)"
            in done.stdout
        )
        assert f"knn_top1 {result[1]}, knn1_top1 {result[2]}" in done.stdout
