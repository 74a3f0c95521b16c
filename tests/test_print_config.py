"""``--print-config`` on evaluate, semisup and detection: the resolved protocol / Detectron2 config,
overrides applied, and nothing run."""

from __future__ import annotations

import pytest
import yaml

from lowssl.detection.__main__ import main as detection_main
from lowssl.evaluate.__main__ import main as evaluate_main
from lowssl.semisup.__main__ import main as semisup_main


def test_evaluate_prints_the_resolved_protocol(tmp_path, capsys):
    args = ["linear", "--random-init", "--arch", "resnet18", "--protocol", "sslight_tiny", "epochs=3"]
    assert evaluate_main([*args, "--output-dir", str(tmp_path / "out"), "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["epochs"] == 3 and printed["optimizer"] == "lars" and printed["crop"]["image_size"] == 32
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("arch", "batch_size", "peak_lr"), [("vit_tiny_patch16_224", 1024, 0.04), ("resnet18", 4096, 0.8)]
)
def test_evaluate_prints_the_protocol_as_the_backbone_family_runs_it(capsys, arch, batch_size, peak_lr):
    # SSLight's ViT probe runs 128 per GPU x 8 at SGD 0.01 x batch/256; its CNN probe 512 x 8 at LARS 0.05.
    args = ["linear", "--random-init", "--arch", arch, "--protocol", "sslight", "--print-config"]
    assert evaluate_main(args) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["batch_size"] == batch_size
    assert printed["base_lr"] * printed["batch_size"] / 256 == pytest.approx(peak_lr)


def test_semisup_prints_the_resolved_protocol(capsys):
    args = ["finetune", "--random-init", "--arch", "resnet18", "--subset", "1pct", "--protocol", "tiny"]
    assert semisup_main([*args, "batch_size=32", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["batch_size"] == 32 and printed["image_size"] == 32


@pytest.mark.usefixtures("one_thread_per_module")
def test_detection_prints_the_resolved_config(tmp_path, capsys):
    config = "detection/configs/mask_rcnn_resnet18_fpn_tiny.yaml"
    args = ["train", "--config", config, "--weights", "none", "--output-dir", str(tmp_path / "out")]
    assert detection_main([*args, "--print-config", "SOLVER.MAX_ITER", "7"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["SOLVER"]["MAX_ITER"] == 7 and printed["MODEL"]["WEIGHTS"] == ""
    assert not (tmp_path / "out").exists()
