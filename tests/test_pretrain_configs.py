"""Every paper experiment has a config, and each tiny preset keeps its experiment's recipe."""

from pathlib import Path

import pytest

from lowssl.config import load
from lowssl.pretrain.config import PretrainConfig

CONFIGS = Path(__file__).resolve().parent.parent / "pretrain" / "configs"

# Table 2: three methods on MobileNetV2; Table 3: DINO on five more backbones; Table 5: 400 epochs.
EXPECTED = (
    {f"{m}_mobilenet_v2_{r}" for m in ("dino", "swav", "moco") for r in ("baseline", "ours")}
    | {
        f"dino_{b}_{r}"
        for b in ("resnet18", "resnet34", "resnet50", "vit_tiny", "vit_small")
        for r in ("baseline", "ours")
    }
    | {f"dino_{b}_ours_400ep" for b in ("mobilenet_v2", "resnet18", "resnet34")}
)
# The paper's experiments; a config of a method or backbone the paper has not (docs/extending.md) may
# sit beside them.
PAPER = sorted(CONFIGS / f"{stem}.yaml" for stem in EXPECTED)
TINY = sorted(CONFIGS / "tiny" / f"{stem}.yaml" for stem in EXPECTED)


def _paper(path):
    return load(PretrainConfig, path, ["data.root=/imagenet"])


def test_every_paper_experiment_has_a_config_and_a_tiny_preset():
    assert all(path.is_file() for path in PAPER + TINY)


@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.stem)
def test_paper_config_values(path):
    cfg = _paper(path)
    vit = cfg.backbone.startswith("vit")
    assert cfg.method_name == path.stem.split("_")[0]
    assert cfg.epochs == (400 if path.stem.endswith("400ep") else 200)
    assert cfg.batch_size == (640 if cfg.backbone in ("resnet50", "vit_small_patch16_224") else 1024)
    assert cfg.views.global_size == 224
    if cfg.recipe == "ours":  # docs/recipes.md, "Baseline and ours": the four values that differ
        assert (cfg.views.global_scale, cfg.views.local_scale, cfg.views.local_size, cfg.method.alpha) == (
            (0.3, 1.0),
            (0.05, 0.3),
            128,
            0.4,
        )
    else:
        scale = 0.25 if vit else 0.14
        assert (cfg.views.global_scale, cfg.views.local_scale, cfg.views.local_size, cfg.method.alpha) == (
            (scale, 1.0),
            (0.05, scale),
            96,
            None,
        )
    assert cfg.views.n_local == (10 if vit else 6)
    assert cfg.optim.name == ("adamw" if vit else "lars")
    assert cfg.optim.base_lr == (0.0005 if vit else 0.3 if cfg.method_name == "swav" else 0.48)


@pytest.mark.parametrize("path", TINY, ids=lambda p: p.stem)
def test_tiny_preset_keeps_the_recipe(path):
    tiny, paper = load(PretrainConfig, path), _paper(CONFIGS / path.name)
    assert tiny.data.dataset == "fashion-mnist" and tiny.views.global_size == 32
    for key in ("global_scale", "local_scale", "n_local", "augmentation"):
        assert getattr(tiny.views, key) == getattr(paper.views, key)
    assert (tiny.recipe, tiny.method.alpha, tiny.backbone, tiny.method_name) == (
        paper.recipe,
        paper.method.alpha,
        paper.backbone,
        paper.method_name,
    )
    assert (tiny.optim.name, tiny.optim.base_lr, tiny.optim.exclusion_rule) == (
        paper.optim.name,
        paper.optim.base_lr,
        paper.optim.exclusion_rule,
    )
