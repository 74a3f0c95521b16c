"""The pre-training loop: checkpoints, exact resume, DDP on CPU, failure behaviour."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lowssl.config import ConfigError, load
from lowssl.data import DatasetError
from lowssl.records import read_records
from pretrain import checkpoint as ckpt
from pretrain.config import PretrainConfig
from pretrain.methods import METHODS
from pretrain.train import NonFiniteLossError, ResumeError, main, train

REPO = Path(__file__).resolve().parent.parent
TINY = {name: REPO / "pretrain/configs/tiny" / f"{name}_mobilenet_v2_ours.yaml" for name in METHODS}
SMALL_HEADS = {
    "dino": ["method.hidden_dim=64", "method.out_dim=128", "method.bottleneck_dim=32"],
    "swav": ["method.hidden_dim=64", "method.out_dim=32", "method.n_prototypes=16", "method.queue_length=32"],
    "moco": ["method.hidden_dim=64", "method.out_dim=32", "method.queue_length=64"],
}


def tiny_overrides(tmp_path, method="dino", **extra):
    """A resnet18 run on 64 synthetic images: 56 to train on (8 held out), 7 steps of 8 per epoch."""
    values = {
        "backbone": "resnet18", "data.dataset": "synthetic", "data.subset": "null", "data.num_workers": 0,
        "batch_size": 8, "epochs": 2, "views.global_size": 32, "views.local_size": 16, "views.n_local": 2,
        "monitor.held_out_per_class": 2, "monitor.knn_bank_size": "null", "monitor.online_linear": "false",
        "checkpoint.every_steps": 0, "output_dir": str(tmp_path / "run"), "records_dir": str(tmp_path / "records"),
    }  # fmt: skip
    values.update(extra)
    return SMALL_HEADS[method] + [f"{k}={v}" for k, v in values.items()]


def tiny_config(tmp_path, method="dino", **extra) -> PretrainConfig:
    return load(PretrainConfig, TINY[method], tiny_overrides(tmp_path, method, **extra))


@pytest.mark.parametrize("method", sorted(METHODS))
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
    assert [int(r["step"]) for r in rows] == [1, 2]


def test_device_side_augmentation_trains(tmp_path):
    cfg = tiny_config(tmp_path, max_steps=2, device_augment="true")
    train(cfg)
    assert ckpt.load(tmp_path / "run" / "last.pth")["global_step"] == 2


def _final_params(path):
    return ckpt.load(path)["method_state"]


def test_resume_after_a_kill_matches_an_uninterrupted_run(tmp_path):
    # Uninterrupted: 10 steps (7 in epoch 0, 3 in epoch 1).
    train(tiny_config(tmp_path / "a", max_steps=10))
    # "Killed" after step 4 (mid-epoch), then resumed automatically from last.pth up to step 10.
    train(tiny_config(tmp_path / "b", max_steps=4))
    assert ckpt.load(tmp_path / "b/run/last.pth")["step_in_epoch"] == 4
    train(tiny_config(tmp_path / "b", max_steps=10))
    a, b = _final_params(tmp_path / "a/run/last.pth"), _final_params(tmp_path / "b/run/last.pth")
    assert a.keys() == b.keys()
    mismatched = [k for k in a if not torch.equal(a[k], b[k])]
    assert not mismatched, f"resumed run differs in {mismatched[:5]}"
    loss_a = list(csv.DictReader(open(tmp_path / "a/run/log.csv")))[-1]["loss"]
    loss_b = list(csv.DictReader(open(tmp_path / "b/run/log.csv")))[-1]["loss"]
    assert loss_a == loss_b


def test_resume_refuses_a_changed_model(tmp_path):
    train(tiny_config(tmp_path, max_steps=1))
    with pytest.raises(ResumeError, match=r"backbone: 'resnet18' -> 'resnet34'"):
        train(tiny_config(tmp_path, max_steps=2, backbone="resnet34"))
    with pytest.raises(ResumeError, match=r"method.alpha: 0.4 -> 0.3"):
        train(tiny_config(tmp_path, max_steps=2, **{"method.alpha": 0.3}))


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    forward = METHODS["dino"].forward
    calls = {"n": 0}

    def nan_on_third_step(self, views, epoch):
        calls["n"] += 1
        out = forward(self, views, epoch)
        if calls["n"] == 3:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(METHODS["dino"], "forward", nan_on_third_step)
    cfg = tiny_config(tmp_path, **{"checkpoint.every_steps": 1})
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at epoch 0, step 2 .*loss_gg.*last\.pth"):
        train(cfg)
    assert ckpt.load(tmp_path / "run/last.pth")["global_step"] == 2


def test_config_typo_is_caught_with_a_suggestion(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.bse_lr'.*Did you mean 'base_lr'"):
        tiny_config(tmp_path, **{"optim.bse_lr": 0.1})
    assert main(["--config", str(TINY["dino"]), "views.n_locals=4"]) == 1
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
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
               "-m", "pretrain", "--config", str(TINY["dino"]), *tiny_overrides(tmp_path, max_steps=2)]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    state = ckpt.load(tmp_path / "run/last.pth")
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
    state = ckpt.load(tmp_path / "run/last.pth")
    assert state["global_step"] == 1
    assert sorted(p.name for p in (tmp_path / "run").glob("*.pth")) == ["last.pth"]
