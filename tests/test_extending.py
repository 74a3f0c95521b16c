"""docs/extending.md's claims, checked: each extension point gets a throwaway entry through the files the
doc lists only (a registration, or a YAML file in a temporary copy of its folder), removed again after
the test, and the code path that uses it takes it with no other change."""

import argparse
import dataclasses
import hashlib
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
import yaml
from test_pretrain_engine import TINY, tiny_overrides

import lowssl
import lowssl.evaluate.__main__ as evaluate_cli
import lowssl.semisup.__main__ as semisup_cli
from lowssl import backbones, released
from lowssl.backbones import BackboneSpec, build_backbone, get_spec
from lowssl.config import load
from lowssl.data import DATASETS, DatasetError, SyntheticImages, build_dataset, register_dataset
from lowssl.evaluate import protocols as evaluate_protocols
from lowssl.evaluate.kinds import KINDS, EvaluationKind, Outcome
from lowssl.evaluate.subject import load_subject
from lowssl.pretrain.config import PretrainConfig, method_config
from lowssl.pretrain.dry_run import training_images
from lowssl.pretrain.methods import DINO, DinoConfig, build_method, get_method, methods, register_method
from lowssl.pretrain.methods.registry import unregister_method
from lowssl.protocols import available, load_protocol
from lowssl.records import read_records
from lowssl.registry import UnknownName
from lowssl.semisup import protocols as semisup_protocols

REPO = Path(__file__).resolve().parent.parent

# ---- a backbone: one registration in lowssl/backbones.py ---------------------------------------------

ALIAS = "resnet18_alias"


@pytest.fixture
def resnet18_alias():
    """The one place a CNN backbone touches: a BackboneSpec registered in lowssl/backbones.py."""

    def build(drop_path_rate: float = 0.0):
        model = torchvision.models.resnet18(weights=None)
        model.fc = torch.nn.Identity()
        return model

    backbones.register(BackboneSpec(ALIAS, "cnn", 512, build, paper_params_m=11.2, paper_gflops=1.8))
    yield ALIAS
    backbones.unregister(ALIAS)


def test_a_registered_backbone_is_built_configured_pretrained_and_evaluated(resnet18_alias, tmp_path):
    assert resnet18_alias in backbones.available()
    features = build_backbone(resnet18_alias)(torch.randn(2, 3, 32, 32))
    assert features.shape == (2, get_spec(resnet18_alias).feature_dim)

    # Pre-training: the config accepts it, and every registered method trains a step on it.
    cfg = load(PretrainConfig, TINY["dino"], tiny_overrides(tmp_path, backbone=resnet18_alias))
    assert cfg.backbone == resnet18_alias
    views = [torch.randn(2, 3, 32, 32)] * 2 + [torch.randn(2, 3, 16, 16)] * 2
    for name in methods():
        method = build_method(name, resnet18_alias, get_method(name).smoke_config())
        method.normalize_prototypes()
        out = method(views, epoch=1)
        out.loss.backward()
        assert torch.isfinite(out.loss)
        assert any(p.grad is not None for p in method.student_backbone.parameters())

    # Evaluation: the subject's feature dimension comes from the same registry.
    args = argparse.Namespace(
        raw_pixels=False, arch=resnet18_alias, random_init=True, recalibrate_bn=False, seed=0
    )
    subject = load_subject(args, image_size=32)
    assert (subject.arch, subject.family, subject.feature_dim) == (resnet18_alias, "cnn", 512)
    assert subject.model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 512)


def test_the_alias_is_gone_after_the_fixture():
    assert ALIAS not in backbones.available()


# ---- a detection backbone: detection/archs.py and detection/configs/ (a ResNet: no builder of its own) --


def test_a_detection_architecture_is_offered_and_converted(resnet18_alias, tmp_path, monkeypatch):
    pytest.importorskip("detectron2")
    from lowssl.detection import archs
    from lowssl.detection.convert import convert_checkpoint
    from lowssl.results.evaluate_checkpoint import detection_architectures

    # detection/configs/mask_rcnn_<name>_fpn_1x.yaml (written here into a temporary folder), and its
    # line in detection/archs.py's ARCH_CONFIGS (a plain dict: set for this test only).
    config = tmp_path / f"mask_rcnn_{resnet18_alias}_fpn_1x.yaml"
    config.write_text(f'_BASE_: "{archs.CONFIG_DIR / "mask_rcnn_resnet18_fpn_1x.yaml"}"\n')
    monkeypatch.setitem(archs.ARCH_CONFIGS, resnet18_alias, config)
    assert resnet18_alias in archs.architectures()
    assert resnet18_alias in detection_architectures()  # what results/evaluate_checkpoint.py allows

    # convert: a checkpoint of the new backbone becomes Detectron2 weights that load into its config's model.
    torch.manual_seed(0)
    student = build_backbone(resnet18_alias).state_dict()
    checkpoint = tmp_path / "last.pth"
    torch.save(
        {
            "format": "lowssl-pretrain-v1",
            "student_backbone": student,
            "teacher_backbone": student,
            "backbone": resnet18_alias,
            "method": "dino",
            "recipe": "ours",
            "epoch": 1,
        },
        checkpoint,
    )
    converted = convert_checkpoint(checkpoint)
    assert converted.payload["lowssl"]["arch"] == resnet18_alias
    assert len(converted.payload["model"]) == len(student) and converted.loaded > 0


# ---- a method: its module, one register_method line ---------------------------------------------------


@dataclasses.dataclass
class AliasConfig(DinoConfig):
    """A config class of its own: the registry tells methods apart by their config's exact type."""


class DinoAlias(DINO):
    name = "dino_alias"
    config_class = AliasConfig


@pytest.fixture
def dino_alias():
    """The one registration a method adds (its module aside): register_method(...)."""
    register_method(DinoAlias, smoke_values=get_method("dino").smoke_values)
    yield DinoAlias.name
    unregister_method(DinoAlias.name)


def test_a_registered_method_is_configured_and_built_by_name(dino_alias):
    assert dino_alias in methods()
    assert type(method_config({"name": dino_alias, **get_method(dino_alias).smoke_values})) is AliasConfig
    cfg = load(PretrainConfig, TINY["dino"], [f"method.name={dino_alias}"])  # the YAML's keys are DINO's
    assert type(cfg.method) is AliasConfig and cfg.method_name == dino_alias
    assert isinstance(build_method(dino_alias, "resnet18", cfg.method), DinoAlias)


# ---- a dataset: one @register_dataset builder in lowssl/data.py ----------------------------------------

TOY = "toy-shapes"


@pytest.fixture
def toy_dataset():
    """48 training / 24 validation images of 3 classes: sizes no built-in dataset has."""

    @register_dataset(TOY)
    def build(split: str, root, image_size: int, transform):
        size = 48 if split == "train" else 24
        return SyntheticImages(size, num_classes=3, image_size=image_size, seed=7, transform=transform)

    yield TOY
    DATASETS.unregister(TOY)


def evaluate_args(tmp_path, *args: str) -> list[str]:
    """``python -m lowssl.evaluate`` arguments: a random-init ResNet18 on the CPU, written under tmp_path."""
    common = "--random-init --arch resnet18 --workers 0 --device cpu --quiet".split()
    return [*args, *common, "--output-dir", str(tmp_path / "out"), "--records-dir", str(tmp_path / "records")]


def test_a_registered_dataset_is_read_by_every_stage(toy_dataset, tmp_path):
    images = build_dataset(toy_dataset, "train", image_size=32)
    assert len(images) == 48 and len(build_dataset(toy_dataset, "val")) == 24
    with pytest.raises(DatasetError, match=f"Did you mean '{toy_dataset}'"):
        build_dataset("toy-shape", "train")

    # Pre-training: data.dataset takes it, and the run's images are the builder's (the dry run's count).
    cfg = load(PretrainConfig, TINY["dino"], tiny_overrides(tmp_path, **{"data.dataset": toy_dataset}))
    assert cfg.data.dataset == toy_dataset
    assert training_images(cfg) == (48 - 3 * cfg.monitor.held_out_per_class, f"{toy_dataset} at hand")

    # Evaluation: --dataset takes it; a k-NN run trains on its 48 images, evaluates on its 24.
    knn = evaluate_args(tmp_path, "knn", "--protocol", "knn_tiny", "--dataset", toy_dataset)
    assert evaluate_cli.main(knn) == 0
    rows = read_records(tmp_path / "records")
    assert set(rows.dataset) == {toy_dataset} and set(rows.metric) == {"knn_top1", "knn1_top1"}

    # Semi-supervised: --dataset takes it; a generated subset is drawn from its training split.
    subset = tmp_path / "subset.txt"
    command = [*f"make-subset --dataset {toy_dataset} --fraction 0.1 --seed 0 --out".split(), str(subset)]
    assert semisup_cli.main(command) == 0
    assert f"# dataset: {toy_dataset}" in subset.read_text() and "# count: 4" in subset.read_text()


def test_the_toy_dataset_is_gone_after_the_fixture():
    assert TOY not in DATASETS


# ---- an evaluation kind: one KINDS.register in evaluate/kinds.py -----------------------------------------

CENTROID = "centroid"


def nearest_centroid(protocol, store, train, evaluation, ctx, workers: int) -> Outcome:
    """Top-1 of the nearest class mean of L2-normalised centre-crop features (a kind of its own)."""
    bank = F.normalize(store.get(train, protocol.crop), dim=1)
    centroids = torch.stack([bank[train.labels == label].mean(0) for label in range(train.num_classes)])
    queries = F.normalize(store.get(evaluation, protocol.crop), dim=1)
    top1 = 100 * (queries @ centroids.T).argmax(1).eq(evaluation.labels).float().mean().item()
    return Outcome({"centroid_top1": top1}, {"centroids": train.num_classes}, {})


@pytest.fixture
def centroid_kind():
    """A kind on the k-NN protocols (their YAMLs, their crop): no protocol file of its own."""
    kind = EvaluationKind(
        help="nearest class mean",
        record_stage="knn",
        protocol_kind="knn",
        metrics=("centroid_top1",),
        compute=nearest_centroid,
        default_protocol="knn_tiny",
    )
    KINDS.register(CENTROID, kind)
    yield CENTROID
    KINDS.unregister(CENTROID)


def test_a_registered_evaluation_kind_is_a_command_that_runs_and_records(centroid_kind, tmp_path, capsys):
    with pytest.raises(UnknownName, match=f"Did you mean '{centroid_kind}'"):
        KINDS.get("centroids")
    assert evaluate_cli.main(evaluate_args(tmp_path, centroid_kind, "--dataset", "synthetic")) == 0
    rows = read_records(tmp_path / "records")
    assert list(rows.metric) == ["centroid_top1"] and set(rows.stage) == {"knn"}
    assert set(rows.protocol) == {"knn_tiny"} and 0 <= rows.value.iloc[0] <= 100
    # The same evaluation again is read back from the records (the kind's metrics name its rows).
    capsys.readouterr()
    assert evaluate_cli.main(evaluate_args(tmp_path, centroid_kind, "--dataset", "synthetic")) == 0
    assert "centroid_top1" in capsys.readouterr().out and len(read_records(tmp_path / "records")) == 1


def test_the_kind_is_gone_after_the_fixture():
    assert CENTROID not in KINDS


# ---- a protocol: one YAML under evaluate/configs/ or semisup/configs/ -----------------------------------


def protocol_folder(tmp_path, monkeypatch, stage_protocols, name: str, text: str) -> Path:
    """A copy of the stage's ``configs/`` folder with ``<name>.yaml`` added, which ``stage_protocols``
    (``lowssl.<stage>.protocols``) reads for this test."""
    folder = tmp_path / "configs"
    shutil.copytree(stage_protocols.CONFIG_DIR, folder)
    (folder / f"{name}.yaml").write_text(text)
    monkeypatch.setattr(stage_protocols, "CONFIG_DIR", folder)
    return folder


def test_a_new_evaluation_protocol_is_listed_loaded_and_chosen(tmp_path, monkeypatch, capsys):
    text = "_base_: knn.yaml\nname: knn_k5_tiny\npaper_protocol: false\nk: 5\ncrop:\n  image_size: 32\n"
    folder = protocol_folder(tmp_path, monkeypatch, evaluate_protocols, "knn_k5_tiny", text)
    assert "knn_k5_tiny" in available(folder, "knn") and "knn_k5_tiny" not in available(folder, "linear")
    assert "knn_k5_tiny" in evaluate_protocols.available("knn")
    protocol = evaluate_protocols.load_protocol("knn_k5_tiny", "knn")
    assert (protocol.name, protocol.k, protocol.crop.image_size) == ("knn_k5_tiny", 5, 32)
    with pytest.raises(UnknownName, match="unknown knn protocol 'knn_k5_tiy'. Did you mean 'knn_k5_tiny'"):
        evaluate_protocols.load_protocol("knn_k5_tiy", "knn")
    # The command line takes it: --protocol resolves it (its --help lists it).
    assert evaluate_cli.main(["knn", "--random-init", "--protocol", "knn_k5_tiny", "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["k"] == 5


def test_a_new_semisup_protocol_is_listed_loaded_and_chosen(tmp_path, monkeypatch, capsys):
    text = "_base_: tiny.yaml\nname: tiny_short\nepochs_1pct: 2\n"
    folder = protocol_folder(tmp_path, monkeypatch, semisup_protocols, "tiny_short", text)
    assert "tiny_short" in available(folder) and "tiny_short" in semisup_protocols.available()
    assert semisup_protocols.load_protocol("tiny_short").epochs_1pct == 2
    with pytest.raises(UnknownName, match="Did you mean 'tiny_short'"):
        load_protocol(folder, "tiny_shrt", semisup_protocols.SemisupProtocol)
    command = "finetune --random-init --arch resnet18 --subset 1pct --protocol tiny_short --print-config"
    assert semisup_cli.main(command.split()) == 0
    assert yaml.safe_load(capsys.readouterr().out)["epochs_1pct"] == 2


# ---- a released checkpoint: one entry in lowssl/released.yaml (and its row in docs/released.md) ---------

RELEASED = "extending_mobilenet_v2"


@pytest.fixture
def released_entry(tmp_path, monkeypatch):
    """A published file (a local one, file://) and its entry as lowssl/released.yaml writes it, put into
    the loaded registry for this test: the registry reads the packaged file only."""
    torch.manual_seed(0)
    state = build_backbone("mobilenet_v2").state_dict()
    published = tmp_path / "published" / "mnv2.pth"
    published.parent.mkdir()
    torch.save(state, published)
    text = f"""
    url: "{published.as_uri()}"
    source: "https://example.org/extending#checkpoints"
    format: torchvision
    arch: mobilenet_v2
    branch: backbone
    sha256: "{hashlib.sha256(published.read_bytes()).hexdigest()}"
    md5_prefix: null
    accuracy: null
    paper: []
    note: "a throwaway entry of tests/test_extending.py"
    """
    monkeypatch.setitem(released.registry(), RELEASED, released._entry(RELEASED, yaml.safe_load(text)))
    monkeypatch.setenv(released.CACHE_ENV, str(tmp_path / "cache"))
    return state


def test_a_released_entry_is_listed_fetched_verified_and_loaded_weights_only(
    released_entry, tmp_path, capsys
):
    assert released.main(["list"]) == 0
    assert RELEASED in capsys.readouterr().out
    with pytest.raises(released.ReleasedError, match=f"Did you mean '{RELEASED}'"):
        released.resolve("extending_mobilenet")
    path = released.fetch(RELEASED, progress=False)
    assert path == tmp_path / "cache" / f"{RELEASED}.pth"
    # By name, as lowssl.load_backbone and results/evaluate_checkpoint.py take it: read with the entry's
    # format, arch and branch, trust off (weights_only).
    model = lowssl.load_backbone(RELEASED)
    assert all(torch.equal(model.state_dict()[key], value) for key, value in released_entry.items())
    # A stage's records name the release for the cached file (evaluate, semisup and detection alike).
    sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    assert released.record_details(path, sha256) == {"released": RELEASED, "sha256_source": "published"}


def test_the_released_entry_is_gone_after_the_fixture():
    assert RELEASED not in released.registry()
