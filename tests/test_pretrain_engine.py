"""The pre-training loop: checkpoints, exact resume, DDP on CPU, failure behaviour."""

import csv
import os
import re
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch
import yaml

from lowssl.checkpoints import schema
from lowssl.config import ConfigError, load
from lowssl.data import DatasetError
from lowssl.pretrain.__main__ import main
from lowssl.pretrain.config import PretrainConfig
from lowssl.pretrain.methods import get_method, methods
from lowssl.pretrain.optim import StepValues
from lowssl.pretrain.run_logger import RunLogger
from lowssl.pretrain.train import timed, train
from lowssl.records import read_records
from lowssl.stopping import NonFiniteLossError, ResumeError

REPO = Path(__file__).resolve().parent.parent
# Every registered method's tiny MobileNetV2 preset, run at its registration's smoke sizes.
TINY = {name: REPO / "pretrain/configs/tiny" / f"{name}_mobilenet_v2_ours.yaml" for name in methods()}


def small_heads(method: str) -> list[str]:
    return [f"method.{key}={value}" for key, value in get_method(method).smoke_values.items()]


def tiny_overrides(tmp_path, method="dino", **extra):
    """A resnet18 run on 64 synthetic images: 56 to train on (8 held out), 7 steps of 8 per epoch."""
    values = {
        "backbone": "resnet18",
        "data.dataset": "synthetic",
        "data.subset": "null",
        "data.num_workers": 0,
        "batch_size": 8,
        "epochs": 2,
        "views.global_size": 32,
        "views.local_size": 16,
        "views.n_local": 2,
        "monitor.held_out_per_class": 2,
        "monitor.knn_bank_size": "null",
        "monitor.online_linear": "false",
        "checkpoint.every_steps": 0,
        "output_dir": str(tmp_path / "run"),
        "records_dir": str(tmp_path / "records"),
    }
    values.update(extra)
    return small_heads(method) + [f"{k}={v}" for k, v in values.items()]


def tiny_config(tmp_path, method="dino", **extra) -> PretrainConfig:
    return load(PretrainConfig, TINY[method], tiny_overrides(tmp_path, method, **extra))


@pytest.mark.parametrize("method", methods())
def test_two_steps_write_a_weights_only_checkpoint(tmp_path, method):
    cfg = tiny_config(tmp_path, method, max_steps=2)
    train(cfg)
    last = tmp_path / "run" / "last.pth"
    state = torch.load(last, weights_only=True)
    assert state["global_step"] == 2 and state["step_in_epoch"] == 2 and state["epoch"] == 0
    assert state["method"] == method and state["backbone"] == "resnet18"
    assert (
        "conv1.weight" in state["student_backbone"]
        and "layer4.1.bn2.running_var" in state["student_backbone"]
    )
    assert (state["teacher_backbone"] is None) == (method == "swav")
    assert state["config"]["method"]["name"] == method and len(state["config_hash"]) == 16
    buffers = {"dino": "criterion.center", "swav": "queue", "moco": "queue"}
    assert any(key.endswith(buffers[method]) for key in state["method_state"])
    rows = list(csv.DictReader(open(tmp_path / "run" / "log.csv")))
    assert [int(r["step"]) for r in rows] == [2]  # log_every_steps 10: only the run's last step
    written = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert written == state["config"], "the run folder's config.yaml is the checkpoint's resolved config"


def test_device_side_augmentation_trains(tmp_path):
    cfg = tiny_config(tmp_path, max_steps=2, device_augment="true")
    train(cfg)
    assert schema.load(tmp_path / "run" / "last.pth")["global_step"] == 2


def _final_params(path):
    return schema.load(path)["method_state"]


def _logged_steps(run_dir):
    return [int(row["step"]) for row in csv.DictReader(open(run_dir / "log.csv"))]


def test_resume_after_a_kill_matches_an_uninterrupted_run(tmp_path):
    # Uninterrupted: 10 steps (7 in epoch 0, 3 in epoch 1).
    train(tiny_config(tmp_path / "a", max_steps=10, log_every_steps=3))
    # "Killed" after step 4 (mid-epoch), then resumed automatically from last.pth up to step 10.
    train(tiny_config(tmp_path / "b", max_steps=4, log_every_steps=3))
    assert schema.load(tmp_path / "b/run/last.pth")["step_in_epoch"] == 4
    train(tiny_config(tmp_path / "b", max_steps=10, log_every_steps=3))
    # Rows every 3 steps of the run, at each epoch's last step (7) and at each run's last (4, 10).
    assert _logged_steps(tmp_path / "a/run") == [3, 6, 7, 9, 10]
    assert _logged_steps(tmp_path / "b/run") == [3, 4, 6, 7, 9, 10]
    a, b = _final_params(tmp_path / "a/run/last.pth"), _final_params(tmp_path / "b/run/last.pth")
    assert a.keys() == b.keys()
    mismatched = [k for k in a if not torch.equal(a[k], b[k])]
    assert not mismatched, f"resumed run differs in {mismatched[:5]}"
    loss_a = list(csv.DictReader(open(tmp_path / "a/run/log.csv")))[-1]["loss"]
    loss_b = list(csv.DictReader(open(tmp_path / "b/run/log.csv")))[-1]["loss"]
    assert loss_a == loss_b


def test_resume_mid_epoch_reports_the_online_probes_whole_epoch(tmp_path):
    probe = {"monitor.online_linear": "true", "monitor.knn_every_epochs": 0, "batch_size": 16}
    train(tiny_config(tmp_path / "a", max_steps=3, **probe))  # epoch 0 is steps 1-3 (56 images / 16)
    train(tiny_config(tmp_path / "b", max_steps=1, **probe))
    train(tiny_config(tmp_path / "b", max_steps=3, **probe))
    a, b = (schema.load(tmp_path / run / "run/last.pth")["metrics"] for run in ("a", "b"))
    assert a["epoch"] == b["epoch"] == 1
    assert a["online_linear_top1"] == b["online_linear_top1"]


def test_resume_refuses_a_changed_model(tmp_path):
    train(tiny_config(tmp_path, max_steps=1))
    with pytest.raises(ResumeError, match=r"backbone: 'resnet18' -> 'resnet34'"):
        train(tiny_config(tmp_path, max_steps=2, backbone="resnet34"))
    with pytest.raises(ResumeError, match=r"method.alpha: 0.4 -> 0.3"):
        train(tiny_config(tmp_path, max_steps=2, **{"method.alpha": 0.3}))


def test_log_rows_hold_the_step_values_and_the_rate_since_the_previous_row(tmp_path):
    logger = RunLogger(tmp_path, enabled=True, every_steps=3)
    for step in range(1, 6):
        values = StepValues(lr=0.1 * step, weight_decay=1e-6)
        seconds, data_wait_s = 0.5 * step, 0.1 * step
        logger.step(
            step, 0, {"loss": float(step)}, values, 8, seconds, data_wait_s, skipped=step == 2, last=step == 5
        )
    logger.close()
    rows = list(csv.DictReader(open(tmp_path / "log.csv")))
    assert [(int(r["step"]), float(r["loss"])) for r in rows] == [(3, 3.0), (5, 5.0)]  # the step's values
    assert [float(r["lr"]) for r in rows] == pytest.approx([0.3, 0.5])
    assert float(rows[0]["images_per_s"]) == pytest.approx(3 * 8 / (0.5 + 1.0 + 1.5))  # steps 1-3
    assert float(rows[1]["images_per_s"]) == pytest.approx(2 * 8 / (2.0 + 2.5))  # steps 4-5
    assert [float(r["data_wait_s"]) for r in rows] == pytest.approx([0.1 + 0.2 + 0.3, 0.4 + 0.5])
    assert [float(r["data_wait_fraction"]) for r in rows] == pytest.approx([0.2, 0.2])
    assert [int(r["skipped_images"]) for r in rows] == [1, 1]  # a running total


def test_a_run_logs_the_time_it_waited_for_data(tmp_path, capsys):
    # Batch 16: 3 steps an epoch. Epoch 1 ends with its summary line, step 4 with the unfinished epoch's.
    train(tiny_config(tmp_path, max_steps=4, log_every_steps=1, batch_size=16))
    rows = list(csv.DictReader(open(tmp_path / "run" / "log.csv")))
    assert len(rows) == 4
    for row in rows:
        step_s = 16 / float(row["images_per_s"])  # a row per step of 16 images
        assert 0 < float(row["data_wait_s"]) <= step_s  # num_workers 0: the step loads its batch
        assert float(row["data_wait_fraction"]) == pytest.approx(float(row["data_wait_s"]) / step_s)
    err = capsys.readouterr().err
    assert re.search(r"epoch 1/2: loss .*, images_per_s \S+, data_wait_fraction \S+\n", err), err
    assert re.search(r"last 1 steps \(an unfinished epoch\): images_per_s \S+, data_wait_fraction \S+\n", err)


def test_the_data_wait_counts_the_loaders_start_and_not_the_step(monkeypatch):
    clock = [0.0]  # a fake perf_counter: the loader and the step advance it by known seconds
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])

    class Loader:
        def __iter__(self):
            clock[0] += 2.0  # DataLoader.__iter__ starts the workers
            return self.batches()

        def batches(self):
            for batch in ("a", "b"):
                clock[0] += 0.5  # the batch is made
                yield batch

    waits = []
    for wait, _ in timed(Loader()):
        waits.append(wait)
        clock[0] += 10.0  # the step: no waiting for data
    assert waits == [2.5, 0.5]


def test_a_resumed_run_keeps_its_log_columns(tmp_path):
    # A log.csv written before the data-wait columns existed: new rows stay under its header.
    old_header = "step,epoch,loss,lr,weight_decay,images_per_s,skipped_images"
    (tmp_path / "log.csv").write_text(f"{old_header}\n1,0,1.0,0.1,1e-06,16.0,0\n")
    logger = RunLogger(tmp_path, enabled=True, every_steps=1)
    logger.step(2, 0, {"loss": 2.0}, StepValues(lr=0.2, weight_decay=1e-6), 8, 0.5, 0.25, skipped=3)
    logger.close()
    lines = (tmp_path / "log.csv").read_text().splitlines()
    assert lines[0] == old_header and len(lines) == 3
    row = next(csv.DictReader(lines[:1] + lines[2:]))
    assert row == {
        "step": "2",
        "epoch": "0",
        "loss": "2.0",
        "lr": "0.2",
        "weight_decay": "1e-06",
        "images_per_s": "16.0",
        "skipped_images": "3",
    }


def test_wandb_mirrors_tensorboard_only_when_its_project_is_set(tmp_path, monkeypatch):
    calls = []

    class FakeRun:
        def finish(self):
            calls.append("finish")

    def init(**kwargs):
        calls.append(kwargs)
        return FakeRun()

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    RunLogger(tmp_path / "off", enabled=True, every_steps=1).close()
    assert calls == [], "no W&B without $WANDB_PROJECT"
    monkeypatch.setenv("WANDB_PROJECT", "lowssl-test")
    provenance = {"config": {"epochs": 2}, "config_hash": "0123456789abcdef"}
    RunLogger(tmp_path / "run", enabled=True, every_steps=1, provenance=provenance).close()
    assert calls[0]["project"] == "lowssl-test" and calls[0]["sync_tensorboard"] is True
    assert calls[0]["id"] == "run-01234567" and calls[0]["config"] == {"epochs": 2} and calls[1] == "finish"
    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed
    with pytest.raises(ConfigError, match="pip install wandb"):
        RunLogger(tmp_path / "missing", enabled=True, every_steps=1)


def test_log_every_steps_must_be_positive(tmp_path):
    with pytest.raises(ConfigError, match="log_every_steps.*must be > 0"):
        tiny_config(tmp_path, log_every_steps=0)


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    forward = get_method("dino").method_class.forward
    calls = {"n": 0}

    def nan_on_third_step(self, views, epoch):
        calls["n"] += 1
        out = forward(self, views, epoch)
        if calls["n"] == 3:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(get_method("dino").method_class, "forward", nan_on_third_step)
    cfg = tiny_config(tmp_path, **{"checkpoint.every_steps": 1})
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at epoch 0, step 2 .*loss_gg.*last\.pth"):
        train(cfg)
    assert schema.load(tmp_path / "run/last.pth")["global_step"] == 2


def test_config_typo_is_caught_with_a_suggestion(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.bse_lr'.*Did you mean 'base_lr'"):
        tiny_config(tmp_path, **{"optim.bse_lr": 0.1})
    assert main(["--config", str(TINY["dino"]), "views.n_locals=4"]) == 2
    assert "Did you mean 'n_local'" in capsys.readouterr().err


def test_corrupt_image_is_fatal_or_skipped_and_counted(tmp_path):
    from PIL import Image

    root = tmp_path / "images"
    for label in range(2):
        (root / "train" / f"c{label}").mkdir(parents=True)
        for i in range(12):
            Image.new("RGB", (40, 40), (i * 20, label * 200, 0)).save(
                root / "train" / f"c{label}" / f"{i}.png"
            )
    (root / "train" / "c0" / "0.png").write_bytes(b"broken")
    common = {"data.dataset": "imagefolder", "data.root": str(root), "batch_size": 4, "epochs": 1}
    with pytest.raises(DatasetError, match=r"0\.png"):
        train(tiny_config(tmp_path / "fatal", **common))
    train(tiny_config(tmp_path / "skip", **common, **{"data.on_corrupt_image": "skip"}))
    rows = list(csv.DictReader(open(tmp_path / "skip/run/log.csv")))
    assert int(rows[-1]["skipped_images"]) == 1


def test_knn_monitor_writes_a_results_record(tmp_path):
    metrics = train(tiny_config(tmp_path, epochs=1))
    assert 0 <= metrics["knn_top1_heldout"] <= 100
    records = read_records(tmp_path / "records")
    row = records.iloc[0]
    assert (row.stage, row.method, row.recipe, row.metric) == ("pretrain", "dino", "ours", "knn_top1_heldout")
    assert row.value == pytest.approx(metrics["knn_top1_heldout"])
    assert '"alpha": 0.4' in row.details


def test_two_process_gloo_ddp_runs_on_cpu(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_port=29517",
        "-m",
        "lowssl.pretrain",
        "--config",
        str(TINY["dino"]),
        *tiny_overrides(tmp_path, max_steps=2),
    ]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    state = schema.load(tmp_path / "run/last.pth")
    assert state["global_step"] == 2


def test_disk_full_during_a_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import errno

    real_save = torch.save
    saves = {"n": 0}

    def save_until_disk_full(obj, file, *args, **kwargs):
        saves["n"] += 1
        if saves["n"] == 2:
            file.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, file, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_until_disk_full)
    with pytest.raises(OSError, match="No space left"):
        train(tiny_config(tmp_path, **{"checkpoint.every_steps": 1}))
    state = schema.load(tmp_path / "run/last.pth")
    assert state["global_step"] == 1
    assert sorted(p.name for p in (tmp_path / "run").glob("*.pth")) == ["last.pth"]
