"""docs/extending.md's claims, checked: a backbone is one registration in lowssl/backbones.py and a
method one registration in pretrain/methods/__init__.py; every registry-parametrised path then
takes them with no other edit."""

import argparse
import dataclasses

import pytest
import torch
import torchvision
from test_pretrain_engine import TINY, tiny_overrides

from lowssl import backbones
from lowssl.backbones import BackboneSpec, build_backbone, get_spec
from lowssl.config import load
from pretrain.config import PretrainConfig, method_config
from pretrain.methods import DINO, DinoConfig, build_method, get_method, methods, register_method
from pretrain.methods.registry import unregister_method

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
    from evaluate.__main__ import load_subject

    args = argparse.Namespace(
        raw_pixels=False, arch=resnet18_alias, random_init=True, recalibrate_bn=False, seed=0
    )
    subject = load_subject(args, image_size=32)
    assert (subject.arch, subject.family, subject.feature_dim) == (resnet18_alias, "cnn", 512)
    assert subject.model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 512)


def test_the_alias_is_gone_after_the_fixture():
    assert ALIAS not in backbones.available()


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
