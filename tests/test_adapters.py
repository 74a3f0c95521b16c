"""Reading checkpoints (lowssl.checkpoints): every registered format, written the way its repository saves it
(docs/checkpoints.md) from a randomly initialised backbone, is detected, mapped by name and loads
bit-identically.

The other branch (teacher, key encoder ...) is a "decoy": every tensor a single value expanded to the
right shape, so files stay small (torch.save keeps the one-element storage) and reading the wrong
branch shows as unequal tensors.
"""

from __future__ import annotations

import argparse
import json
import os
from collections import OrderedDict

import pytest
import torch
from yacs.config import CfgNode

from lowssl.backbones import build_backbone, get_spec
from lowssl.checkpoints import CheckpointLayoutError, Provenance, formats, open_checkpoint
from lowssl.checkpoints.formats import SAFE_GLOBALS, SSLIGHT_RESNET_CHILDREN
from lowssl.evaluate.inspect_cmd import inspect_main
from lowssl.io import CheckpointError, load_checkpoint

CNNS = ("mobilenet_v2", "resnet18")
VIT = "vit_tiny_patch16_224"


@pytest.fixture(scope="module")
def backbones():
    """One randomly initialised state dict per arch, built once (ViT-Ti takes about a second)."""
    torch.manual_seed(0)
    cache = {}

    def get(arch):
        if arch not in cache:
            cache[arch] = build_backbone(arch).state_dict()
        return cache[arch]

    return get


def decoy(state):
    return {key: torch.full((), 7, dtype=value.dtype).expand(value.shape) for key, value in state.items()}


def prefixed(prefix, state):
    return {prefix + key: value for key, value in state.items()}


def head(dim):
    """A small DINO-style projection MLP (Linear-BN-GELU-Linear, weight-normalised last layer)."""
    return {
        "mlp.0.weight": torch.randn(8, dim),
        "mlp.0.bias": torch.randn(8),
        "mlp.1.weight": torch.randn(8),
        "mlp.1.bias": torch.randn(8),
        "mlp.3.weight": torch.randn(4, 8),
        "mlp.3.bias": torch.randn(4),
        "last_layer.weight_v": torch.randn(16, 4),
        "last_layer.weight_g": torch.ones(16, 1),
    }


def optimizer_state():
    return {"state": {0: {"momentum_buffer": torch.zeros(3)}}, "param_groups": [{"lr": 0.1, "params": [0]}]}


def queue():
    return {"module.queue": torch.randn(16, 64), "module.queue_ptr": torch.zeros(1, dtype=torch.long)}


def dim(arch):
    return get_spec(arch).feature_dim


# Writers: (backbone state dict, arch) -> (checkpoint as the repository saves it, expected head_state).


def write_lowssl(state, arch):
    h = head(dim(arch))
    method_state = {
        **prefixed("student_backbone.", state),
        **prefixed("student_head.", h),
        **prefixed("teacher_backbone.", decoy(state)),
        **prefixed("teacher_head.", decoy(h)),
        "criterion.center": torch.zeros(1, 16),
    }
    return {
        "format": "lowssl-pretrain-v1",
        "student_backbone": state,
        "teacher_backbone": decoy(state),
        "method_state": method_state,
        "optimizer": optimizer_state(),
        "method": "dino",
        "backbone": arch,
        "recipe": "ours",
        "epoch": 3,
        "config": {"backbone": arch, "method": {"name": "dino"}},
        "config_hash": "0" * 16,
        "git_commit": "unknown",
    }, h


SSLIGHT_CHILD_INDEX = {name: index for index, name in SSLIGHT_RESNET_CHILDREN.items()}


def sslight_names(state, arch):
    """torchvision / timm names -> SSLight encoder names (the inverse of what the adapter does)."""
    if arch.startswith("resnet"):
        return {f"{SSLIGHT_CHILD_INDEX[k.split('.')[0]]}.{k.partition('.')[2]}": v for k, v in state.items()}
    if arch == "mobilenet_v2":
        return {k.removeprefix("features."): v for k, v in state.items()}
    return dict(state)


def sslight_config(arch):
    config = CfgNode()
    config.MODEL = CfgNode({"BACKBONE_ARCH": "vit_tiny" if arch == VIT else arch})
    config.DINOHead = CfgNode({"OUTPUT_DIM": 16, "USE_BN_IN_HEAD": True, "NUM_LAYERS": 3})
    config.MULTI_VIEWS_TRANSFORMS = CfgNode({"NMB_CROPS": [2, 6], "CROPS_SCALE": [(0.3, 1.0), (0.05, 0.3)]})
    config.freeze()
    return config


def write_sslight(state, arch, method="dino"):
    encoder = "" if arch == VIT else "encoder."
    h = head(dim(arch))
    student_prefix, head_prefix = {
        "dino": ("module.student.backbone.", "module.student.head."),
        "swav": ("module.network.backbone.", "module.network.head.projection."),
        "moco": ("module.encoder_q.backbone.", "module.encoder_q.head."),
    }[method]
    names = sslight_names(state, arch)
    state_dict = {
        **prefixed(student_prefix + encoder, names),
        **prefixed(head_prefix, h),
        "module.classifier.weight": torch.randn(10, dim(arch)),
        "module.classifier.bias": torch.zeros(10),
    }
    if method == "dino":
        state_dict.update(prefixed("module.teacher.backbone." + encoder, decoy(names)))
        state_dict.update(prefixed("module.teacher.head.", decoy(h)))
    if method == "moco":
        state_dict.update(prefixed("module.encoder_k.backbone.encoder.", decoy(names)))
        state_dict.update(
            {"module.queue": torch.randn(16, 64), "module.queue_ptr": torch.zeros(1, dtype=torch.long)}
        )
    return {
        "config": sslight_config(arch),
        "epoch": 200,
        "steps": 250200,
        "state_dict": state_dict,
        "optimizer": optimizer_state(),
        "loss": {"center": torch.zeros(1, 16)},
    }, h


def write_dino_full(state, arch):
    h = head(dim(arch))
    teacher_prefix = "" if arch == VIT else "module."  # the ViT teacher is not DDP-wrapped
    student = {**prefixed("module.backbone.", decoy(state)), **prefixed("module.head.", decoy(h))}
    teacher = {**prefixed(teacher_prefix + "backbone.", state), **prefixed(teacher_prefix + "head.", h)}
    args = argparse.Namespace(
        arch="vit_tiny" if arch == VIT else arch, out_dim=16, lr=0.0005, local_crops_number=10
    )
    return {
        "student": student,
        "teacher": teacher,
        "optimizer": optimizer_state(),
        "epoch": 100,
        "args": args,
        "dino_loss": {"center": torch.zeros(1, 16)},
    }, h


def write_dino_backbone(state, arch):
    return dict(state), None


def write_moco(state, arch):
    fc = {
        "fc.0.weight": torch.randn(8, dim(arch)),
        "fc.0.bias": torch.zeros(8),
        "fc.2.weight": torch.randn(4, 8),
    }
    state_dict = {
        **prefixed("module.encoder_q.", {**state, **fc}),
        **prefixed("module.encoder_k.", decoy({**state, **fc})),
        **queue(),
    }
    return {"epoch": 200, "arch": arch, "state_dict": state_dict, "optimizer": optimizer_state()}, None


def write_swav(state, arch):
    return {
        **prefixed("module.", state),
        "module.projection_head.0.weight": torch.randn(8, dim(arch)),
        "module.projection_head.0.bias": torch.zeros(8),
        "module.prototypes.weight": torch.randn(30, 8),
    }, None


def write_simreg(state, arch):
    state_dict = {
        **prefixed("encoder_q.module.", state),
        "predict_q.0.weight": torch.randn(8, dim(arch)),
        "predict_q.0.bias": torch.zeros(8),
        **prefixed("encoder_t.module.", decoy(state)),
    }
    opt = argparse.Namespace(arch=arch, teacher_arch="resnet50", lr=0.05)
    return {"opt": opt, "state_dict": state_dict, "optimizer": optimizer_state(), "epoch": 130}, None


def write_compress(state, arch):
    opt = argparse.Namespace(student_arch=arch, teacher_arch="resnet50", compress_memory_size=128)
    return {
        "opt": opt,
        "model": prefixed("module.", state),
        "optimizer": optimizer_state(),
        "epoch": 130,
    }, None


def write_seed(state, arch):
    state_dict = {
        **prefixed("module.student.", state),
        "module.student.fc.0.weight": torch.randn(8, dim(arch)),
        **prefixed("module.teacher.", decoy(state)),
        **queue(),
    }
    return {"epoch": 200, "arch": arch, "state_dict": state_dict, "optimizer": optimizer_state()}, None


def write_disco(state, arch):
    state_dict = {
        **prefixed("module.encoder_q.", state),
        "module.encoder_q.fc.0.weight": torch.randn(8, dim(arch)),
        **prefixed("module.encoder_k.", decoy(state)),
        **prefixed("module.teacher_encoder_q.", decoy(state)),
        "module.queue": torch.randn(16, 64),
    }
    return {"epoch": 200, "arch": arch, "state_dict": state_dict, "optimizer": optimizer_state()}, None


def write_bingo(state, arch):
    state_dict = {
        **prefixed("module.encoder_q.", state),
        "module.encoder_q.fc.0.weight": torch.randn(8, dim(arch)),
        **prefixed("module.encoder_k.", decoy(state)),
        "module.encoder_k.fc.0.weight": torch.randn(8, 2048),
    }
    return {"state_dict": state_dict}, None


def write_torchvision(state, arch):
    classifier = (
        {"fc.weight": torch.randn(10, 512), "fc.bias": torch.zeros(10)}
        if arch.startswith("resnet")
        else {"classifier.1.weight": torch.randn(10, 1280), "classifier.1.bias": torch.zeros(10)}
    )
    return {**state, **classifier}, None


def write_timm(state, arch):
    return {**state, "head.weight": torch.randn(10, dim(arch)), "head.bias": torch.zeros(10)}, None


WRITERS = {
    "lowssl": write_lowssl,
    "sslight": write_sslight,
    "dino-full": write_dino_full,
    "dino-backbone": write_dino_backbone,
    "moco": write_moco,
    "swav": write_swav,
    "simreg": write_simreg,
    "compress": write_compress,
    "seed": write_seed,
    "disco": write_disco,
    "bingo": write_bingo,
    "torchvision": write_torchvision,
    "timm": write_timm,
}


def cases():
    """Every registered format x MobileNetV2, ResNet18 (CNN formats) and ViT-Ti (ViT formats)."""
    for fmt in formats():
        archs = (CNNS if "cnn" in fmt.families else ()) + ((VIT,) if "vit" in fmt.families else ())
        for arch in archs:
            yield pytest.param(fmt.name, arch, id=f"{fmt.name}-{arch}")


def save(tmp_path, checkpoint, name="ckpt.pth"):
    path = tmp_path / name
    torch.save(checkpoint, path)
    return path


def assert_identical(loaded, expected):
    assert list(loaded) == list(expected)
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key


def test_every_registered_format_has_a_layout_writer():
    assert sorted(WRITERS) == sorted(fmt.name for fmt in formats())


@pytest.mark.parametrize("fmt, arch", list(cases()))
def test_format_is_detected_and_loads_bit_identical(tmp_path, backbones, fmt, arch):
    state = backbones(arch)
    checkpoint, expected_head = WRITERS[fmt](state, arch)
    path = save(tmp_path, checkpoint)

    detected = open_checkpoint(path)
    # Layouts the keys cannot tell apart resolve to the first registered (moco, torchvision, timm).
    assert detected.format == fmt or fmt in detected.matched_formats
    assert detected.format == detected.matched_formats[0]
    assert (detected.arch, detected.missing, detected.unexpected) == (arch, [], [])
    assert detected.loaded == len(state)
    assert_identical(detected.state_dict, state)
    if expected_head is None:
        assert detected.head_state is None
    else:
        assert_identical(detected.head_state, expected_head)

    forced = open_checkpoint(path, fmt=fmt)
    assert (forced.format, forced.missing, forced.unexpected) == (fmt, [], [])
    assert_identical(forced.state_dict, state)


def test_moco_family_ties_resolve_to_moco_and_say_so(tmp_path, backbones):
    path = save(tmp_path, write_bingo(backbones("mobilenet_v2"), "mobilenet_v2")[0])
    adapted = open_checkpoint(path)
    assert adapted.format == "moco" and "bingo" in adapted.matched_formats
    assert any("bingo" in note and "same tensors" in note for note in adapted.notes)
    # Extra keys decide where they exist: DisCo's teacher_encoder_* and SEED's module.student.
    for writer, name in ((write_disco, "disco"), (write_seed, "seed")):
        path = save(tmp_path, writer(backbones("mobilenet_v2"), "mobilenet_v2")[0], f"{name}.pth")
        assert open_checkpoint(path).matched_formats == [name]


def test_flat_dino_backbone_files_read_as_torchvision_or_timm(tmp_path, backbones):
    path = save(tmp_path, write_dino_backbone(backbones("resnet18"), "resnet18")[0])
    adapted = open_checkpoint(path)
    assert adapted.matched_formats == ["torchvision", "dino-backbone"]


def test_branches(tmp_path, backbones):
    state = backbones("mobilenet_v2")
    dino = save(tmp_path, write_dino_full(state, "mobilenet_v2")[0], "dino.pth")
    assert open_checkpoint(dino).branch == "teacher"  # DINO's eval scripts use --checkpoint_key teacher
    assert_identical(open_checkpoint(dino, branch="student").state_dict, decoy(state))
    lowssl = save(tmp_path, write_lowssl(state, "mobilenet_v2")[0], "lowssl.pth")
    teacher = open_checkpoint(lowssl, branch="teacher")
    assert_identical(teacher.state_dict, decoy(state))
    assert set(teacher.head_state) == set(head(1280))
    sslight = save(tmp_path, write_sslight(state, "mobilenet_v2")[0], "sslight.pth")
    assert_identical(open_checkpoint(sslight, branch="teacher").state_dict, decoy(state))
    with pytest.raises(CheckpointLayoutError, match="no branch 'key'; branches: student, teacher"):
        open_checkpoint(sslight, branch="key")


def test_lowssl_swav_file_has_no_teacher(tmp_path, backbones):
    checkpoint, _ = write_lowssl(backbones("mobilenet_v2"), "mobilenet_v2")
    checkpoint.update(
        teacher_backbone=None, method="swav", method_state={"projection_head.mlp.0.weight": torch.ones(2)}
    )
    path = save(tmp_path, checkpoint)
    assert set(open_checkpoint(path).head_state) == {"mlp.0.weight"}
    with pytest.raises(CheckpointLayoutError, match="branch teacher: no backbone keys"):
        open_checkpoint(path, branch="teacher")


@pytest.mark.parametrize("method", ["swav", "moco"])
def test_sslight_swav_and_moco_prefixes(tmp_path, backbones, method):
    state = backbones("mobilenet_v2")
    checkpoint, expected_head = write_sslight(state, "mobilenet_v2", method)
    adapted = open_checkpoint(save(tmp_path, checkpoint))
    assert (adapted.format, adapted.missing, adapted.unexpected) == ("sslight", [], [])
    assert_identical(adapted.state_dict, state)
    assert_identical(adapted.head_state, expected_head)


def test_sslight_resnet_is_mapped_by_name_not_position(tmp_path, backbones):
    state = backbones("resnet18")
    checkpoint, _ = write_sslight(state, "resnet18")
    checkpoint["state_dict"] = dict(reversed(checkpoint["state_dict"].items()))  # positions mean nothing
    adapted = open_checkpoint(save(tmp_path, checkpoint))
    assert adapted.missing == [] and adapted.unexpected == []
    for key, value in state.items():
        assert torch.equal(adapted.state_dict[key], value), key


def test_yacs_config_loads_weights_only_as_plain_mappings(tmp_path, backbones):
    path = save(tmp_path, write_sslight(backbones("mobilenet_v2"), "mobilenet_v2")[0])
    # Allow-listing CfgNode itself is not enough: weights_only only fills exact dict types.
    with pytest.raises(CheckpointError, match="Can only SETITEMS? for dict"):
        load_checkpoint(path, safe_globals=[CfgNode])
    config = load_checkpoint(path, safe_globals=SAFE_GLOBALS)["config"]
    assert type(config) is OrderedDict and config["MODEL"]["BACKBONE_ARCH"] == "mobilenet_v2"
    assert config["MULTI_VIEWS_TRANSFORMS"]["CROPS_SCALE"] == [(0.3, 1.0), (0.05, 0.3)]
    adapted = open_checkpoint(path)
    assert "architecture mobilenet_v2 from the file's config.MODEL.BACKBONE_ARCH" in adapted.notes


def test_recorded_arch_is_used_only_when_it_matches_the_keys(tmp_path, backbones):
    checkpoint, _ = write_moco(backbones("mobilenet_v2"), "mobilenet_v2")
    checkpoint["arch"] = "resnet50"  # e.g. a distillation file naming its teacher
    adapted = open_checkpoint(save(tmp_path, checkpoint))
    assert adapted.arch == "mobilenet_v2" and adapted.missing == []
    assert any("records architecture 'resnet50'" in note for note in adapted.notes)
    forced = open_checkpoint(save(tmp_path, checkpoint), arch="resnet18")  # --arch is obeyed, and reported
    assert forced.loaded == 0 and len(forced.missing) == 120 and "features.0.0.weight" in forced.unexpected


def test_shape_mismatches_are_missing_and_unexpected(tmp_path, backbones):
    state = dict(backbones("resnet18"), **{"fc.weight": torch.zeros(1)})  # torchvision drops fc anyway
    state["conv1.weight"] = torch.zeros(64, 3, 3, 3)  # a CIFAR-style stem
    adapted = open_checkpoint(save(tmp_path, state), arch="resnet18")
    assert adapted.missing == ["conv1.weight"] and adapted.unexpected == ["conv1.weight"]
    assert any("conv1.weight (64, 3, 3, 3) vs (64, 3, 7, 7)" in note for note in adapted.notes)


def test_wrong_forced_format_fails_clearly(tmp_path, backbones):
    path = save(tmp_path, write_moco(backbones("mobilenet_v2"), "mobilenet_v2")[0])
    with pytest.raises(
        CheckpointLayoutError, match=r"format swav, branch backbone: no backbone keys .*state_dict/module"
    ):
        open_checkpoint(path, fmt="swav")
    with pytest.raises(
        CheckpointLayoutError, match=r"unknown checkpoint format 'nope'\..* Allowed values: .*lowssl, moco"
    ):
        open_checkpoint(path, fmt="nope")


def test_unknown_layout_lists_the_keys_it_found(tmp_path):
    path = save(
        tmp_path, {"weights": {"encoder.stem.kernel": torch.zeros(3), "encoder.blocks.0.w": torch.zeros(2)}}
    )
    with pytest.raises(
        CheckpointLayoutError,
        match=r"no known checkpoint format fits .*weights/encoder\.stem\.kernel.*"
        r"known formats: lowssl, sslight",
    ):
        open_checkpoint(path)


def test_ties_that_read_different_tensors_are_ambiguous(tmp_path, backbones):
    state = backbones("mobilenet_v2")
    path = save(
        tmp_path,
        {"state_dict": prefixed("module.encoder_q.", state), "model": prefixed("module.", decoy(state))},
    )
    with pytest.raises(
        CheckpointLayoutError, match="ambiguous checkpoint: formats moco, .*compress.* pass --format"
    ):
        open_checkpoint(path)
    assert open_checkpoint(path, fmt="compress").state_dict["features.0.0.weight"].unique().tolist() == [7.0]


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    path = save(tmp_path, {"state_dict": {"conv1.weight": torch.zeros(1)}, "args": Payload()})
    with pytest.raises(CheckpointError, match="--trust-checkpoint"):
        open_checkpoint(path)
    assert inspect_main(["--checkpoint", str(path)]) == 2
    assert not marker.exists()


def test_truncated_file_gives_a_clear_error(tmp_path, backbones, capsys):
    full = save(tmp_path, write_moco(backbones("mobilenet_v2"), "mobilenet_v2")[0])
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        open_checkpoint(truncated)
    assert inspect_main(["--checkpoint", str(truncated)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "corrupt or truncated" in err and "Traceback" not in err


def test_inspect_reports_and_ends_with_json(tmp_path, backbones, capsys):
    state = backbones("resnet18")
    path = save(tmp_path, write_moco(state, "resnet18")[0])
    assert inspect_main(["--checkpoint", str(path)]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary == {
        "format": "moco",
        "arch": "resnet18",
        "branch": "query",
        "loaded": len(state),
        "missing": [],
        "unexpected": [],
    }
    assert "state_dict/module.encoder_k.* (" in out  # dropped keys are counted by rule

    without_layer4 = {k: v for k, v in state.items() if not k.startswith("layer4.")}
    path = save(tmp_path, write_torchvision(without_layer4, "resnet18")[0], "no_layer4.pth")
    assert inspect_main(["--checkpoint", str(path)]) == 1
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["arch"] == "resnet18" and summary["unexpected"] == []
    assert summary["missing"] == [k for k in state if k.startswith("layer4.")]


def test_build_backbone_refuses_missing_keys_unless_allowed(tmp_path, backbones):
    state = backbones("mobilenet_v2")
    model = open_checkpoint(save(tmp_path, write_moco(state, "mobilenet_v2")[0])).build_backbone()
    assert_identical(model.state_dict(), state)
    partial = {k: v for k, v in state.items() if not k.startswith("features.18.")}
    opened = open_checkpoint(save(tmp_path, write_torchvision(partial, "mobilenet_v2")[0], "partial.pth"))
    with pytest.raises(
        CheckpointLayoutError, match="lacks 6 backbone keys of mobilenet_v2: features.18.0.weight"
    ):
        opened.build_backbone()
    model = opened.build_backbone(allow_missing=True)
    assert len(opened.missing) == 6 and torch.equal(
        model.state_dict()["features.0.0.weight"], state["features.0.0.weight"]
    )


def test_provenance_is_read_from_lowssl_files_only(tmp_path, backbones):
    checkpoint, _ = write_lowssl(backbones("mobilenet_v2"), "mobilenet_v2")
    checkpoint["config"].update(seed=5, epochs=3, batch_size=8)
    source = open_checkpoint(save(tmp_path, checkpoint)).provenance
    assert (source.method, source.recipe, source.pretrain_epochs, source.seed) == ("dino", "ours", 3, 5)
    assert source.budget == "all ? images x 3 epochs, batch 8"
    third_party = open_checkpoint(save(tmp_path, write_moco(backbones("mobilenet_v2"), "mobilenet_v2")[0]))
    assert (
        third_party.provenance == Provenance()
    )  # a MoCo file's own "epoch" / "arch" say nothing of lowssl's


def test_evaluate_and_detection_read_a_checkpoint_once(tmp_path, backbones, torch_loads):
    from lowssl.detection.convert import convert_checkpoint
    from lowssl.evaluate.__main__ import build_parser
    from lowssl.evaluate.subject import load_subject

    path = str(save(tmp_path, write_lowssl(backbones("resnet18"), "resnet18")[0]))
    subject = load_subject(build_parser().parse_args(["knn", "--checkpoint", path]), image_size=32)
    assert (subject.method, subject.recipe, subject.pretrain_epochs) == ("dino", "ours", 3)
    assert torch_loads == [path]  # weights and provenance from one read
    torch_loads.clear()
    assert convert_checkpoint(path).payload["lowssl"]["pretrain_epochs"] == 3
    assert torch_loads == [path]
