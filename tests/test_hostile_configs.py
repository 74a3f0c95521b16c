"""Config files and make variables from elsewhere are data, never code.

Every YAML entry point (pre-training configs and their overrides, evaluate and semisup protocol files,
Detectron2 configs), fed a file with a Python tag directly or through its base chain, refuses it in
a real process: exit 2, one line naming the tag and the file, and the command the tag names never
runs. A value given to a make target is passed to the recipe's shell as data. A pre-training config
whose local crops are larger than its global crops is refused.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lowssl.config import ConfigError, from_dict, load
from lowssl.pretrain.config import PretrainConfig
from lowssl.pretrain.views import ViewsConfig
from lowssl.pretrain.views.config import resolve_local_size

REPO = Path(__file__).resolve().parent.parent
PRETRAIN_CONFIG = REPO / "pretrain/configs/tiny/dino_resnet18_ours.yaml"  # GC 32, LC 18
DETECTION_CONFIG = REPO / "detection/configs/mask_rcnn_resnet18_fpn_tiny.yaml"
TAG = "python/object/apply:subprocess.getoutput"  # yaml.unsafe_load would run the command it is given


def _hostile(marker: Path) -> str:
    """A YAML value that runs a shell command (leaving ``marker``) when unsafely loaded."""
    return f'!!{TAG} ["touch {marker}; echo tiny"]'


def _pretrain(tmp: Path, elsewhere: Path, hostile: str, via_base: bool, print_config: bool):
    evil = elsewhere / "evil.yaml"
    evil.write_text(f"_base_: {PRETRAIN_CONFIG}\nseed: {hostile}\n")
    config = evil
    if via_base:
        config = tmp / "top.yaml"
        config.write_text(f"_base_: {evil}\nepochs: 1\n")
    return ["lowssl.pretrain", "--config", str(config), f"output_dir={tmp / 'run'}"], evil


def _pretrain_override(tmp: Path, elsewhere: Path, hostile: str, via_base: bool, print_config: bool):
    return ["lowssl.pretrain", "--config", str(PRETRAIN_CONFIG), f"seed={hostile}"], "override 'seed="


def _protocol_stage(stage: str, kind: str, command: list[str]):
    """evaluate and semisup read protocols by name from their package's configs/ folder: the hostile
    protocol is dropped into a copy of the package, which ``python -m`` then runs."""

    def build(tmp: Path, elsewhere: Path, hostile: str, via_base: bool, print_config: bool):
        shutil.copytree(REPO / "lowssl", tmp / "lowssl", ignore=shutil.ignore_patterns("__pycache__"))
        package = tmp / "lowssl" / stage
        shutil.copytree(REPO / stage, package, ignore=shutil.ignore_patterns("__pycache__"))
        evil = elsewhere / "evil.yaml"
        evil.write_text(f"{kind}note: {hostile}\n")
        protocol = package / "configs" / "hostile.yaml"
        if via_base:
            protocol.write_text(f"_base_: {evil}\nname: hostile\n")
        else:
            protocol.write_text(evil.read_text() + "name: hostile\n")
            evil = protocol
        return [f"lowssl.{stage}", *command, "--protocol", "hostile"], evil

    return build


def _detection(tmp: Path, elsewhere: Path, hostile: str, via_base: bool, print_config: bool):
    evil = elsewhere / "evil.yaml"
    evil.write_text(f"_BASE_: {DETECTION_CONFIG}\nLOWSSL:\n  SCHEDULE: {hostile}\n")
    config = evil
    if via_base:
        config = tmp / "top.yaml"
        config.write_text(f"_BASE_: {evil}\nSOLVER:\n  MAX_ITER: 1\n")
    command = ["lowssl.detection", "train", "--config", str(config), "--weights", "none"]
    return [*command, "--output-dir", str(tmp / "out"), "--records-dir", str(tmp / "records")], evil


STAGES = {
    "pretrain": _pretrain,
    "pretrain-override": _pretrain_override,
    "evaluate": _protocol_stage("evaluate", "kind: knn\n", ["knn", "--random-init", "--arch", "resnet18"]),
    "semisup": _protocol_stage(
        "semisup", "", ["finetune", "--random-init", "--arch", "resnet18", "--subset", "1pct"]
    ),
    "detection": _detection,
}


@pytest.mark.parametrize(
    ("stage", "via_base", "print_config"),
    [
        ("pretrain", False, True),
        ("pretrain", True, True),
        ("pretrain-override", False, True),
        ("evaluate", False, True),
        ("evaluate", True, True),
        ("semisup", False, True),
        ("semisup", True, True),
        ("detection", False, True),
        ("detection", True, True),
        ("detection", False, False),
        ("detection", True, False),
    ],
)
def test_a_python_tag_in_a_config_is_refused_without_running(tmp_path, stage, via_base, print_config):
    marker = tmp_path / "code-ran"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    tree = tmp_path / "tree"  # the working directory: python -m finds a copied package here first
    tree.mkdir()
    arguments, named = STAGES[stage](tree, elsewhere, _hostile(marker), via_base, print_config)
    command = [sys.executable, "-m", *arguments, *(["--print-config"] if print_config else [])]
    env = {**os.environ, "LOWSSL_HOME": str(tmp_path / "home"), "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True, timeout=300)
    assert not marker.exists(), "the config ran the command its tag names"
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    assert TAG in lines[0] and str(named) in lines[0], lines[0]


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize(
    ("target", "variable", "value", "refusal"),
    [
        (
            "evaluate-checkpoint",
            "CKPT",
            "{tmp}/dir`touch {marker}`/$(shell touch {marker})ck.pth",
            "does not exist",
        ),
        ("reproduce-gains", "EPOCHS", "1`touch {marker}`;touch {marker}", "invalid int value"),
    ],
)
def test_a_make_variable_is_data_never_shell_text(tmp_path, target, variable, value, refusal):
    marker = tmp_path / "code-ran"
    value = value.format(tmp=tmp_path, marker=marker)
    # -o install: the venv is there already (this test runs in it), so the recipe itself runs at once.
    command = [
        "make",
        "-s",
        "-C",
        str(REPO),
        "-o",
        "install",
        target,
        f"{variable}={value}",
        f"PY={sys.executable}",
    ]
    env = {**os.environ, "LOWSSL_HOME": str(tmp_path / "home"), "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert not marker.exists(), "the recipe's shell ran the command inside the value"
    assert result.returncode != 0, result.stdout[-3000:]
    assert refusal in result.stderr and value in result.stderr, result.stderr[-3000:]


def test_local_crops_larger_than_global_crops_are_refused():
    # global_size overridden alone leaves the preset's 18-px local crops larger than the 7-px global ones
    with pytest.raises(ConfigError, match=r"'views.local_size': 18 px is larger than global_size 7 px"):
        load(PretrainConfig, PRETRAIN_CONFIG, ["views.global_size=7"])
    assert load(PretrainConfig, PRETRAIN_CONFIG, ["views.local_size=32"]).views.local_size == 32  # LC = GC
    # equal scale ranges: mean(A_l) * mean(1 / A_g) > 1 (Jensen), so the matched LC exceeds GC
    same_scales = {"global_scale": [0.05, 0.1], "local_scale": [0.05, 0.1], "global_size": 32, "n_local": 1}
    with pytest.raises(ConfigError, match=r"'auto' resolves to 33 px, larger than global_size 32 px"):
        resolve_local_size(from_dict(ViewsConfig, {**same_scales, "local_size": "auto"}))
