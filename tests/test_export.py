"""Export: a backbone out of any checkpoint, loaded by torchvision / timm / safetensors / torch.hub with
the same features as lowssl's own model; a file of another architecture is refused."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch

from lowssl import load_backbone
from lowssl.backbones import build_backbone
from lowssl.checkpoints import CheckpointLayoutError, open_checkpoint
from lowssl.evaluate.__main__ import main as evaluate_main
from lowssl.export import export_backbone, target_model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    """A third-party layout (torchvision's own state dict, classifier included) of a seeded ResNet18."""
    torch.manual_seed(0)
    model = build_backbone("resnet18").eval()
    path = tmp_path_factory.mktemp("ckpt") / "resnet18.pth"
    state = {**model.state_dict(), "fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}
    torch.save(state, path)
    return path, model


def _features(model, images):
    with torch.no_grad():
        return model.eval()(images)


@pytest.mark.parametrize("target", ["torchvision", "timm"])
def test_export_loads_into_the_other_tool_with_identical_features(resnet18_file, tmp_path, target):
    path, model = resnet18_file
    out = export_backbone(open_checkpoint(path), target, tmp_path / f"r18-{target}.pth")
    other = target_model("resnet18", target)
    state = torch.load(out, weights_only=True)
    report = other.load_state_dict(state, strict=target == "timm")
    if target == "torchvision":
        assert sorted(report.missing_keys) == ["fc.bias", "fc.weight"] and not report.unexpected_keys
        other.fc = torch.nn.Identity()
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(_features(other, images), _features(model, images), rtol=0, atol=1e-5)


def test_safetensors_export_keeps_tensors_and_says_what_they_are(resnet18_file, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    path, model = resnet18_file
    out = export_backbone(open_checkpoint(path), "safetensors", tmp_path / "r18.safetensors")
    rebuilt = build_backbone("resnet18")
    rebuilt.load_state_dict(load_file(out))
    images = torch.randn(2, 3, 32, 32)
    assert torch.equal(_features(rebuilt, images), _features(model, images))
    with safe_open(out, "pt") as file:
        assert file.metadata()["arch"] == "resnet18" and file.metadata()["format"] == "torchvision"


def test_vit_export_to_timm(tmp_path):
    torch.manual_seed(0)
    model = build_backbone("vit_tiny_patch16_224").eval()
    path = tmp_path / "vit.pth"
    torch.save(model.state_dict(), path)
    out = export_backbone(
        open_checkpoint(path, arch="vit_tiny_patch16_224"), "timm", tmp_path / "vit-timm.pth"
    )
    other = target_model("vit_tiny_patch16_224", "timm")
    other.load_state_dict(torch.load(out, weights_only=True))
    images = torch.randn(1, 3, 224, 224)
    torch.testing.assert_close(_features(other, images), _features(model, images), rtol=0, atol=1e-5)
    with pytest.raises(CheckpointLayoutError, match="timm model"):
        export_backbone(open_checkpoint(path, arch="vit_tiny_patch16_224"), "torchvision", tmp_path / "x.pth")


def test_export_to_an_architecture_the_weights_are_not_is_refused(resnet18_file, tmp_path, capsys):
    path, _ = resnet18_file
    out = tmp_path / "r34.pth"
    code = evaluate_main(
        ["export", "--checkpoint", str(path), "--arch", "resnet34", "--to", "torchvision", "--out", str(out)]
    )
    assert code == 2 and not out.exists()
    error = capsys.readouterr().err
    assert "does not hold a resnet34" in error and "missing" in error and "--arch" in error


def test_export_command_and_python_api(resnet18_file, tmp_path, capsys):
    path, model = resnet18_file
    out = tmp_path / "r18.safetensors"
    assert evaluate_main(["export", "--checkpoint", str(path), "--to", "safetensors", "--out", str(out)]) == 0
    assert "resnet18 backbone (torchvision" in capsys.readouterr().out
    images = torch.randn(2, 3, 32, 32)
    assert torch.equal(_features(load_backbone(path), images), _features(model, images))


def test_torch_hub_loads_a_backbone_from_this_repository(resnet18_file):
    path, model = resnet18_file
    hub_model = torch.hub.load(str(REPO), "lowssl_backbone", source="local", checkpoint=str(path))
    images = torch.randn(2, 3, 32, 32)
    assert torch.equal(_features(hub_model, images), _features(model, images))


def _safetensors_file(path: Path, header: dict, data: bytes = b"", declared: int | None = None) -> Path:
    """A safetensors file written by hand: the header's length (8 bytes, little-endian), the JSON
    header, the tensors' bytes; ``declared`` overrides the length the first 8 bytes give."""
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text) if declared is None else declared) + text + data)
    return path


def test_an_exported_safetensors_file_reads_back_whatever_its_name(resnet18_file, tmp_path, capsys):
    """Told apart by its header, not its name: a safetensors file saved as .pth reads as one (before:
    "corrupt or truncated (opcode b'\\x..' unknown)", torch.load reading it as a pickle)."""
    path, model = resnet18_file
    out = export_backbone(open_checkpoint(path), "safetensors", tmp_path / "r18.safetensors")
    renamed = tmp_path / "r18-safetensors.pth"
    renamed.write_bytes(out.read_bytes())
    images = torch.randn(2, 3, 32, 32)
    assert torch.equal(_features(load_backbone(renamed), images), _features(model, images))


@pytest.mark.parametrize(
    ("name", "header", "declared", "problem"),
    [
        (
            "huge-header",
            {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}},
            1 << 40,
            "header too large",
        ),
        (
            "shape-mismatch",
            {"w": {"dtype": "F32", "shape": [1000, 1000], "data_offsets": [0, 8]}},
            None,
            "invalid shape, data type, or offset for tensor",
        ),
    ],
)
def test_a_broken_safetensors_file_is_named_as_one(name, header, declared, problem, tmp_path, capsys):
    path = _safetensors_file(tmp_path / f"{name}.pth", header, bytes(8), declared)
    assert evaluate_main(["inspect", "--checkpoint", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert (
        f"checkpoint {path} is a safetensors file (by its first bytes), corrupt or truncated" in err
        and problem in err
    ), err
    assert "opcode" not in err and "re-download or re-create it" in err, err
