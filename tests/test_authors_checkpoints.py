"""The authors' released files load weights-only: SSLight saves ``{'config': cfg, ...}`` with an fvcore
CfgNode (saic-fi/SSLight@557e54a:src/sslight/engine/trainer.py, ``save_checkpoint``), and a CfgNode of
yacs, fvcore or Detectron2 is rebuilt as plain mappings without importing its library. Anything else in a
config is still refused, and nothing in it runs."""

from __future__ import annotations

import json
import subprocess
import sys
import types

import pytest
import torch
from detectron2.config import CfgNode as Detectron2CfgNode
from fvcore.common.config import CfgNode as FvcoreCfgNode
from yacs.config import CfgNode as YacsCfgNode

from lowssl.backbones import build_backbone
from lowssl.checkpoints.formats import SAFE_GLOBALS
from lowssl.evaluate.inspect_cmd import inspect_main
from lowssl.io import CheckpointError, load_checkpoint
from tests.test_adapters import save, write_sslight

CFG_NODES = {"yacs": YacsCfgNode, "fvcore": FvcoreCfgNode, "detectron2": Detectron2CfgNode}


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    return build_backbone("resnet18").state_dict()


def sslight_file(tmp_path, state, node_class, arch="resnet18"):
    """A DINO ResNet18 file in SSLight's layout whose ``config`` is a ``node_class`` CfgNode."""
    checkpoint, _ = write_sslight(state, arch)
    config = node_class()
    config.MODEL = node_class({"BACKBONE_ARCH": arch})
    config.SOLVER = node_class({"BASE_LR": 0.05, "TOTAL_EPOCHS": 200})
    config.SSL_METHOD = "DINO"
    config.freeze()
    checkpoint["config"] = config
    return save(tmp_path, checkpoint)


@pytest.mark.parametrize("library", sorted(CFG_NODES))
def test_a_released_sslight_file_loads_weights_only_without_importing_the_config_library(
    tmp_path, resnet18, capsys, library
):
    path = sslight_file(tmp_path, resnet18, CFG_NODES[library])
    # A fresh process: the config's library is never imported, the config reads as plain mappings.
    probe = (
        "import sys; from lowssl.io import load_checkpoint; from lowssl.checkpoints.formats import SAFE_GLOBALS; "
        f"config = load_checkpoint({str(path)!r}, safe_globals=SAFE_GLOBALS)['config']; "
        f"print(type(config).__name__, config['MODEL']['BACKBONE_ARCH'], {library!r} in sys.modules)"
    )
    printed = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert printed.split() == ["OrderedDict", "resnet18", "False"]
    # `evaluate inspect` with trust off: every backbone tensor of the student found, none missing.
    assert inspect_main(["--checkpoint", str(path)]) == 0
    report = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert (report["format"], report["branch"], report["arch"]) == ("sslight", "student", "resnet18")
    assert report["missing"] == [] and report["loaded"] == len(resnet18)


class RunsCodeWhenLoaded(dict):
    """A "config" whose unpickling would run a shell command."""

    def __init__(self, marker):
        super().__init__()
        self.marker = marker

    def __reduce__(self):
        return (subprocess.call, (["touch", self.marker],))


@pytest.mark.parametrize(
    "config",
    [
        pytest.param(lambda marker: RunsCodeWhenLoaded(marker), id="code-running-class"),
        pytest.param(lambda marker: types.SimpleNamespace(MODEL="resnet18"), id="other-config-class"),
        pytest.param(
            lambda marker: _node_holding(FvcoreCfgNode, "MODEL", RunsCodeWhenLoaded(marker)),
            id="cfgnode-holding-code",
        ),
        pytest.param(
            lambda marker: _node_holding(YacsCfgNode, "EXTRA", types.SimpleNamespace(x=1)),
            id="cfgnode-holding-object",
        ),
    ],
)
def test_a_config_of_any_other_class_or_content_is_refused_and_runs_nothing(tmp_path, resnet18, config):
    marker = tmp_path / "MARKER"
    checkpoint, _ = write_sslight(resnet18, "resnet18")
    checkpoint["config"] = config(str(marker))
    path = save(tmp_path, checkpoint)
    with pytest.raises(CheckpointError, match="objects other than tensors and plain data"):
        load_checkpoint(path, safe_globals=SAFE_GLOBALS)
    assert inspect_main(["--checkpoint", str(path)]) == 2
    assert not marker.exists()


def _node_holding(node_class, key, value):
    """A CfgNode with a value its own constructor would refuse (set past its checks, as a hand-made file can)."""
    node = node_class({"MODEL": node_class({"BACKBONE_ARCH": "resnet18"})})
    dict.__setitem__(node, key, value)
    return node


def test_the_config_of_a_loaded_file_is_plain_data(tmp_path, resnet18):
    config = load_checkpoint(sslight_file(tmp_path, resnet18, FvcoreCfgNode), safe_globals=SAFE_GLOBALS)[
        "config"
    ]
    assert config["SOLVER"] == {"BASE_LR": 0.05, "TOTAL_EPOCHS": 200} and config["SSL_METHOD"] == "DINO"
    assert not any(isinstance(value, torch.Tensor) for value in config.values())
