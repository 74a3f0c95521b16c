"""Weights that would give a number that means nothing are refused before anything is recorded: another
architecture's weights under --arch, tensors of another shape, NaN / inf weights, and finite weights
whose features overflow (issue 26; detection convert: tests/test_detection.py; k > bank:
tests/test_knn.py)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision

import lowssl.evaluate.__main__ as cli
from lowssl.checkpoints import CheckpointLayoutError, open_checkpoint

REPO = Path(__file__).resolve().parent.parent
STAGES = {"knn": ["--protocol", "knn_tiny"], "linear": ["--protocol", "fast_tiny"]}


def evaluate_args(tmp_path, stage: str, *args: str) -> list[str]:
    """``python -m lowssl.evaluate STAGE`` on the synthetic set (64 train / 32 val images), CPU, no workers."""
    return [
        stage,
        *STAGES[stage],
        "--dataset",
        "synthetic",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--output-dir",
        str(tmp_path / "out"),
        "--records-dir",
        str(tmp_path / "records"),
        *args,
    ]


def nothing_recorded(tmp_path) -> bool:
    """No records row, no result JSON and no cached feature file anywhere under the run's folders."""
    return not list((tmp_path / "records").glob("*")) and not list((tmp_path / "out").rglob("*.*"))


@pytest.fixture(scope="module")
def resnet34_file(tmp_path_factory):
    """A real torchvision ResNet34 state dict (fc included, as torchvision saves it)."""
    path = tmp_path_factory.mktemp("r34") / "resnet34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), path)
    return path


def resnet18_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).state_dict()


def test_weights_of_another_architecture_are_refused_with_the_keys_and_the_fix(tmp_path, resnet34_file):
    """Before: ResNet34 weights under --arch resnet18 loaded 120 keys, left 96 in the details JSON and
    recorded a k-NN top-1 (61.50 on 500 Fashion-MNIST images) as resnet18."""
    code = subprocess.run(
        [
            sys.executable,
            "-m",
            "lowssl.evaluate",
            *evaluate_args(tmp_path, "knn", "--checkpoint", str(resnet34_file), "--arch", "resnet18"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    error = code.stderr.strip()
    assert code.returncode == 2 and "\n" not in error and "Traceback" not in error, code.stderr
    assert error.startswith(f"error: {resnet34_file} (torchvision, branch backbone) does not hold a resnet18")
    assert "96 backbone keys that resnet18 does not have: layer1.2.conv1.weight, layer1.2.bn1.weight" in error
    assert "pass --arch resnet34" in error
    assert nothing_recorded(tmp_path)


def test_weights_of_a_smaller_architecture_are_refused_as_missing_keys(tmp_path, capsys):
    path = tmp_path / "resnet18.pth"
    torch.save(resnet18_state(), path)
    code = cli.main(evaluate_args(tmp_path, "knn", "--checkpoint", str(path), "--arch", "resnet34"))
    error = capsys.readouterr().err
    assert code == 2 and "lacks 96 backbone keys of resnet34: layer1.2.conv1.weight" in error
    assert "pass --arch resnet18" in error and nothing_recorded(tmp_path)


def test_a_backbone_tensor_of_another_shape_is_refused(tmp_path):
    state = resnet18_state()
    state["conv1.weight"] = torch.zeros(64, 1, 7, 7)  # a one-channel stem
    path = tmp_path / "gray.pth"
    torch.save(state, path)
    opened = open_checkpoint(path, arch="resnet18")
    with pytest.raises(CheckpointLayoutError) as error:
        opened.build_backbone()
    assert (
        "1 backbone keys with another shape than in resnet18: conv1.weight (64, 1, 7, 7) vs (64, 3, 7, 7)"
        in str(error.value)
    )


def test_heads_the_format_drops_stay_allowed(tmp_path):
    """A lowssl file's projection head and a torchvision file's fc are not backbone: still loadable."""
    state = resnet18_state()
    path = tmp_path / "with_fc.pth"
    torch.save({**state, "fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}, path)
    opened = open_checkpoint(path, arch="resnet18")
    assert opened.unexpected == [] and "fc.weight" in opened.dropped
    assert torch.equal(opened.build_backbone().state_dict()["conv1.weight"], state["conv1.weight"])


@pytest.mark.parametrize("stage", STAGES)
def test_nan_weights_are_refused_by_knn_and_linear(tmp_path, stage, capsys):
    """Before: all-NaN ResNet18 weights recorded k-NN 11.00 / 1-NN 12.00 (500 Fashion-MNIST images)."""
    state = resnet18_state()
    state["layer2.0.bn1.running_var"] = torch.full_like(state["layer2.0.bn1.running_var"], float("nan"))
    path = tmp_path / "nan.pth"
    torch.save(state, path)
    code = cli.main(evaluate_args(tmp_path, stage, "--checkpoint", str(path)))
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1
    assert f"{path} (torchvision, branch backbone): 1 of its 120 backbone tensors hold NaN or inf" in error
    assert "(first: layer2.0.bn1.running_var)" in error and nothing_recorded(tmp_path)


@pytest.mark.parametrize("stage", STAGES)
def test_finite_weights_whose_features_overflow_are_refused(tmp_path, stage, capsys):
    """Every weight is finite, but BN scales of 1e30 overflow float32: every feature is NaN / inf."""
    state = resnet18_state()
    for name in ("bn1.weight", "layer1.0.bn1.weight", "layer1.0.bn2.weight"):
        state[name] = torch.full_like(state[name], 1e30)
    path = tmp_path / "overflow.pth"
    torch.save(state, path)
    code = cli.main(evaluate_args(tmp_path, stage, "--checkpoint", str(path)))
    error = capsys.readouterr().err.splitlines()[-1]  # after the start banner
    assert code == 2 and error.startswith("error: ")
    images = "64 of 64 synthetic train" if stage == "knn" else "32 of 32 synthetic val"  # read first
    assert f"{path} (resnet18, branch backbone): the features of {images} images hold NaN or inf" in error
    assert nothing_recorded(tmp_path)


def test_semisup_refuses_another_architectures_weights_before_writing(tmp_path, resnet34_file, capsys):
    from lowssl.semisup.__main__ import main as semisup_main

    run_dir = tmp_path / "run"
    args = ["finetune", "--checkpoint", str(resnet34_file), "--arch", "resnet18", "--new-head"]
    code = semisup_main([*args, "--subset", "1pct", "--protocol", "tiny", "--output-dir", str(run_dir)])
    error = capsys.readouterr().err
    assert code != 0 and "does not hold a resnet18: 96 backbone keys" in error and not run_dir.exists()
