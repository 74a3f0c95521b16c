"""``python -m lowssl.pretrain --dry-run`` / ``--print-config``: the run's shape before it starts, nothing written."""

from __future__ import annotations

import pytest
import torch
import yaml

from lowssl.pretrain.__main__ import main

CONFIG = "pretrain/configs/tiny/dino_resnet18_ours.yaml"
SMALL = ["data.dataset=synthetic", "data.subset=null", "monitor.held_out_per_class=2", "batch_size=8"]


def test_dry_run_prints_steps_lr_views_and_groups_and_writes_nothing(tmp_path, capsys):
    # synthetic: 64 images, 4 classes; 2 per class held out -> 56 to train on, 7 steps of 8
    code = main(["--config", CONFIG, *SMALL, "epochs=3", f"output_dir={tmp_path / 'run'}", "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0
    assert "56 training images" in out and "7 per epoch x 3 epochs = 21" in out
    assert "peak LR 0.015 (base_lr 0.48 x 8/256)" in out
    assert "6 x 18px, scale (0.05, 0.3)" in out, "the local size resolved, with its scale"
    assert "group regular" in out and "group no_decay" in out and "s/step x 21 steps" in out
    assert not (tmp_path / "run").exists()


def test_dry_run_counts_processes_and_assumes_imagenet_when_absent(tmp_path, capsys):
    args = ["--config", "pretrain/configs/dino_resnet18_ours.yaml", f"data.root={tmp_path / 'none'}"]
    assert (
        main([*args, "--dry-run", "--processes", "8", "--timed-steps", "0", "epochs=1", "max_steps=5"]) == 0
    )
    out = capsys.readouterr().out
    assert "batch 1024 = 8 x 128" in out and "assumed ImageNet-1k's 1,281,167" in out
    assert "1,202 per epoch x 1 epochs = 5 (max_steps 5)" in out, "50 per class held out for the monitor"


def test_dry_run_answers_without_data_root_and_without_the_runs_device(capsys, monkeypatch):
    """Before: a paper config without data.root was refused ("dataset imagefolder needs a root"), and
    with one on a CPU machine it timed 2 steps at batch 64, 224 px: 3 min for "65505 h on this machine"."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["--config", "dino_resnet18_ours", "device=cuda", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "1,231,167 training images (assumed ImageNet-1k's 1,281,167: no data.root given)" in out
    assert "estimated time  timing skipped: no cuda device here" in out


def test_dry_run_on_a_cpu_times_one_step_of_a_small_batch_and_says_so(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["--config", CONFIG, *SMALL, "batch_size=64", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "on this machine's cpu (1 step timed (shrunk for this CPU) at batch 16" in out
    assert "scaled linearly to 64 per process" in out


def test_config_is_a_preset_name_or_a_file(capsys):
    """Before: --config tiny/dino_resnet18_ours (the name --help lists) was "does not exist"."""
    assert main(["--config", "tiny/dino_resnet18_ours", "--print-config"]) == 0
    by_name = capsys.readouterr().out
    assert main(["--config", CONFIG, "--print-config"]) == 0
    assert capsys.readouterr().out == by_name
    with pytest.raises(SystemExit) as stop:
        main(["--config", "tiny/dino_resnet18_our", "--print-config"])
    (line,) = capsys.readouterr().err.splitlines()
    assert stop.value.code == 2
    assert line.startswith(
        "error: argument --config: no config file or preset named tiny/dino_resnet18_our; "
        "did you mean tiny/dino_resnet18_ours?"
    )


def test_print_config_is_the_resolved_config(capsys):
    assert main(["--config", CONFIG, "epochs=7", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["epochs"] == 7 and printed["backbone"] == "resnet18"
    assert printed["method"]["name"] == "dino" and printed["method"]["alpha"] == 0.4, "defaults filled in"
    assert printed["views"]["local_size"] == 18 and printed["optim"]["base_lr"] == 0.48


def test_help_lists_the_shipped_configs(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--help"])
    out = capsys.readouterr().out
    assert stop.value.code == 0 and "``" not in out, "plain text, no raw RST backticks"
    assert "paper experiments (ImageNet), pretrain/configs/:" in out and "dino_resnet18_ours_400ep" in out
    assert "tiny presets (Fashion-MNIST, CPU), pretrain/configs/tiny/:" in out and "--dry-run" in out
