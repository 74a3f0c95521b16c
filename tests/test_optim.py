import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lowssl.config import ConfigError, from_dict, load
from lowssl.pretrain.config import PretrainConfig
from lowssl.pretrain.optim import (
    LARS,
    OptimConfig,
    build_optimizer,
    build_schedules,
    classify_parameters,
    clip_gradients,
    cosine_schedule,
    param_groups,
    set_lr_and_weight_decay,
)

CONFIGS = Path(__file__).resolve().parent.parent / "pretrain" / "configs"


class Toy(nn.Module):
    """A normal conv (with bias), a BN, a depth-wise conv, a grouped (not depth-wise) conv, a Linear
    with bias and a bare 1-D parameter (like a layer scale)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=True)
        self.bn = nn.BatchNorm2d(4)
        self.dw = nn.Conv2d(4, 4, 3, groups=4, bias=False)
        self.grouped = nn.Conv2d(4, 4, 1, groups=2, bias=False)
        self.fc = nn.Linear(4, 5)
        self.scale = nn.Parameter(torch.ones(5))

    def forward(self, x):
        x = self.grouped(self.dw(torch.relu(self.bn(self.conv(x)))))
        return self.fc(x.mean(dim=(2, 3))) * self.scale


# (weight decay, LARS adaptation) per parameter, written out by hand for each rule.
EXPECTED = {
    "paper": {
        "conv.weight": (True, True),
        "grouped.weight": (True, True),
        "fc.weight": (True, True),
        "conv.bias": (False, False),
        "bn.weight": (False, False),
        "bn.bias": (False, False),
        "fc.bias": (False, False),
        "scale": (False, False),
        "dw.weight": (True, False),
    },
    "authors": {
        "conv.weight": (True, True),
        "grouped.weight": (True, True),
        "fc.weight": (True, True),
        "conv.bias": (False, False),
        "bn.weight": (False, False),
        "bn.bias": (False, False),
        "fc.bias": (False, False),
        "scale": (False, False),
        "dw.weight": (False, True),
    },
}


def _toy(seed=0):
    torch.manual_seed(seed)
    model = Toy()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    return model


def _by_hand(p0, grads, wd, adapt, lr, momentum, eta):
    """DINO's LARS written out for one tensor."""
    p, mu = p0.clone(), torch.zeros_like(p0)
    for g in grads:
        dp = g + wd * p
        if adapt:
            dp = dp * (eta * p.norm() / dp.norm())
        mu = momentum * mu + dp
        p = p - lr * mu
    return p


def test_classification_is_by_module_type():
    kinds = {k: sorted(n for n, _ in v) for k, v in classify_parameters(Toy()).items()}
    assert kinds == {
        "regular": ["conv.weight", "fc.weight", "grouped.weight"],
        "no_decay": ["bn.bias", "bn.weight", "conv.bias", "fc.bias", "scale"],
        "depthwise": ["dw.weight"],
    }


@pytest.mark.parametrize("rule", ["paper", "authors"])
def test_lars_groups_and_two_steps_match_the_formula(rule):
    lr, wd, momentum, eta = 0.5, 0.1, 0.9, 0.02
    model = _toy()
    cfg = OptimConfig(weight_decay=wd, weight_decay_end=wd, trust_coefficient=eta, exclusion_rule=rule)
    optimizer = build_optimizer(model, cfg)
    assert isinstance(optimizer, LARS)
    set_lr_and_weight_decay(optimizer, lr, wd)

    # Grouping: every parameter sits in a group whose switches are the expected ones.
    seen = {}
    for group in optimizer.param_groups:
        for name in group["param_names"]:
            seen[name] = (group["apply_weight_decay"], group["lars_adaptation"])
            assert group["weight_decay"] == (wd if group["apply_weight_decay"] else 0.0)
    assert seen == EXPECTED[rule]

    # Numbers: two steps (the second one uses the momentum buffer) against the formula.
    named = dict(model.named_parameters())
    start = {n: p.detach().clone() for n, p in named.items()}
    torch.manual_seed(1)
    grads = [{n: torch.randn_like(p) for n, p in named.items()} for _ in range(2)]
    for step_grads in grads:
        for n, p in named.items():
            p.grad = step_grads[n].clone()
        optimizer.step()
    for n, p in named.items():
        decay, adapt = EXPECTED[rule][n]
        expected = _by_hand(start[n], [g[n] for g in grads], wd if decay else 0.0, adapt, lr, momentum, eta)
        torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-6, msg=f"{rule}: {n}")
        assert not torch.allclose(p.detach(), start[n])

    # The two rules really treat the depth-wise weight differently.
    dw = [g["dw.weight"] for g in grads]
    paper = _by_hand(start["dw.weight"], dw, wd, False, lr, momentum, eta)
    authors = _by_hand(start["dw.weight"], dw, 0.0, True, lr, momentum, eta)
    assert (paper - authors).abs().max() > 1e-2


def test_lars_skips_parameters_without_gradient_and_zero_norms():
    model = _toy()
    optimizer = build_optimizer(model, OptimConfig())
    set_lr_and_weight_decay(optimizer, 1.0, 0.0)
    before = model.fc.bias.detach().clone()
    with torch.no_grad():
        model.conv.weight.zero_()  # |p| = 0: the trust ratio falls back to 1
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    model.fc.bias.grad = None
    optimizer.step()
    assert torch.equal(model.fc.bias.detach(), before)
    assert model.fc.bias not in optimizer.state
    torch.testing.assert_close(model.conv.weight.detach(), -torch.ones_like(model.conv.weight))


def test_lars_trains_with_autograd():
    model = _toy()
    optimizer = build_optimizer(model, OptimConfig())
    set_lr_and_weight_decay(optimizer, 0.1, 1e-6)
    model(torch.randn(2, 3, 9, 9)).square().mean().backward()
    optimizer.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_mobilenet_v2_depthwise_and_norm_groups():
    import torchvision

    model = torchvision.models.mobilenet_v2(weights=None)
    model.classifier = nn.Identity()
    kinds = classify_parameters(model)
    assert len(kinds["depthwise"]) == 17  # one 3x3 depth-wise conv per inverted-residual block
    assert all(p.ndim == 4 and p.shape[1] == 1 for _, p in kinds["depthwise"])
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert len(kinds["no_decay"]) == 2 * n_bn  # BN weight + bias; torchvision's convs have no bias
    assert all(p.ndim == 4 for _, p in kinds["regular"])


def test_adamw_groups_no_decay_on_biases_and_norms():
    from timm.models.vision_transformer import VisionTransformer

    # timm's ViT class (the modules of ViT-Ti/S), small enough to step in milliseconds.
    model = VisionTransformer(img_size=32, patch_size=16, embed_dim=16, depth=2, num_heads=2, num_classes=0)
    optimizer = build_optimizer(model, OptimConfig(name="adamw"))
    assert isinstance(optimizer, torch.optim.AdamW)
    modules = dict(model.named_modules())
    groups = {g["kind"]: g for g in optimizer.param_groups}
    assert set(groups) == {"regular", "no_decay"}
    for name in groups["no_decay"]["param_names"]:
        module_name, _, attr = name.rpartition(".")
        assert attr == "bias" or isinstance(modules[module_name], nn.LayerNorm), name
    decayed = set(groups["regular"]["param_names"])
    assert {"pos_embed", "cls_token", "blocks.0.attn.qkv.weight", "patch_embed.proj.weight"} <= decayed
    assert not any(n.endswith(".bias") or ".norm" in n for n in decayed)

    # Decoupled decay with zero gradients: decayed tensors shrink by (1 - lr * wd), the others stay.
    lr, wd = 0.01, 0.04
    set_lr_and_weight_decay(optimizer, lr, wd)
    assert groups["no_decay"]["weight_decay"] == 0.0 and groups["regular"]["weight_decay"] == wd
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for n, p in model.named_parameters():
        factor = 1 - lr * wd if n in decayed else 1.0
        torch.testing.assert_close(p.detach(), before[n] * factor, msg=n)


def test_lr_schedule_warmup_and_cosine_values():
    epochs, spe, batch = 20, 5, 1024
    s = build_schedules(OptimConfig(), epochs, spe, batch)
    peak, low = 0.48 * 1024 / 256, 0.0048
    assert len(s) == 100
    assert s.at(0).lr == 0.0
    assert s.at(10).lr == pytest.approx(peak * 10 / 49)
    assert s.at(49).lr == pytest.approx(peak)  # last warm-up step: linspace ends on the peak
    assert s.at(10 * spe).lr == pytest.approx(peak)  # first cosine step: epoch 10, step 0
    assert s.at(75).lr == pytest.approx((peak + low) / 2)  # half-way through the cosine
    assert s.at(99).lr == pytest.approx(low + 0.5 * (peak - low) * (1 + math.cos(math.pi * 49 / 50)))
    assert np.all(s.weight_decay == 1e-6)  # CNN: constant
    with pytest.raises(IndexError):
        s.at(epochs * spe)


def _paper_optim(experiment: str) -> OptimConfig:
    return load(PretrainConfig, CONFIGS / f"{experiment}.yaml", ["data.root=/imagenet"]).optim


def test_swav_warmup_starts_at_0075_and_vit_weight_decay_cosine():
    swav = build_schedules(_paper_optim("swav_mobilenet_v2_ours"), 20, 5, 1024)
    assert swav.at(0).lr == pytest.approx(0.075) and swav.at(49).lr == pytest.approx(1.2)
    vit = build_schedules(_paper_optim("dino_vit_tiny_ours"), 20, 5, 1024)
    assert vit.at(49).lr == pytest.approx(0.002) and vit.at(99).lr > 1e-5
    wd = vit.weight_decay
    assert (
        wd[0] == pytest.approx(0.04)
        and wd[50] == pytest.approx(0.22)
        and wd[-1] == pytest.approx(0.4, abs=1e-3)
    )
    assert np.all(np.diff(wd) > 0)


def test_apply_writes_lr_everywhere_and_weight_decay_only_where_allowed():
    model = _toy()
    cfg = OptimConfig(weight_decay=0.04, weight_decay_end=0.4)
    optimizer = build_optimizer(model, cfg)
    s = build_schedules(cfg, 20, 5, 512)
    values = s.apply(optimizer, 60)
    assert values.lr == pytest.approx(s.lr[60]) and values.weight_decay == pytest.approx(s.weight_decay[60])
    for group in optimizer.param_groups:
        assert group["lr"] == values.lr
        assert group["weight_decay"] == (values.weight_decay if group["kind"] != "no_decay" else 0.0)


def test_cosine_schedule_without_warmup_and_bad_warmup():
    np.testing.assert_allclose(
        cosine_schedule(1.0, 0.0, 1, 4),
        [1.0, 0.5 + 0.5 * math.cos(math.pi / 4), 0.5, 0.5 + 0.5 * math.cos(3 * math.pi / 4)],
    )
    with pytest.raises(ConfigError, match="warmup_epochs"):
        cosine_schedule(1.0, 0.0, 5, 4, warmup_epochs=6)


def test_clip_gradients_is_per_parameter():
    a, b = nn.Parameter(torch.zeros(4)), nn.Parameter(torch.zeros(4))
    model = nn.Module()
    model.a, model.b = a, b
    a.grad = torch.full((4,), 5.0)  # norm 10
    b.grad = torch.full((4,), 0.5)  # norm 1
    clip_gradients(model, 3.0)
    assert a.grad.norm().item() == pytest.approx(3.0, rel=1e-5)
    torch.testing.assert_close(b.grad, torch.full((4,), 0.5))


@dataclass
class _Run:
    optim: OptimConfig = field(default_factory=OptimConfig)


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"base_lr": -0.1}, "optim.base_lr"),
        ({"exclusion_rule": "dino"}, "optim.exclusion_rule"),
        ({"name": "sgd"}, "optim.name"),
        ({"min_lr": -1.0}, "optim.min_lr"),
        ({"momentum": 1.0}, "optim.momentum"),
        ({"clip_grad": 0.0}, "optim.clip_grad"),
        ({"warmup_epochs": -1}, "optim.warmup_epochs"),
    ],
)
def test_invalid_config_names_the_key(data, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        from_dict(_Run, {"optim": data})


def test_config_from_yaml_data_and_direct_construction():
    cfg = from_dict(OptimConfig, {"name": "adamw", "base_lr": 0.0005, "min_lr": 1.0e-5, "clip_grad": 3})
    assert cfg.name == "adamw" and cfg.clip_grad == 3.0 and cfg.exclusion_rule == "paper"
    with pytest.raises(ConfigError, match="'exclusion_rule'"):
        OptimConfig(exclusion_rule="dino")
    with pytest.raises(ConfigError, match="'exclusion_rule'"):
        param_groups(Toy(), "dino")


# Evidence for the module docstring's "why not timm" (fails if timm's maths changes to DINO's).


def test_timm_lars_is_not_dinos_lars():
    from timm.optim import Lars

    torch.manual_seed(0)
    p0, g = torch.randn(8, 4), torch.randn(8, 4)
    lr, wd, eta = 1.0, 0.1, 0.01

    def timm_step(weight_decay, always_adapt):
        p = nn.Parameter(p0.clone())
        p.grad = g.clone()
        Lars(
            [p], lr=lr, momentum=0.9, weight_decay=weight_decay, trust_coeff=eta, always_adapt=always_adapt
        ).step()
        return p.detach()

    assert (timm_step(wd, False) - _by_hand(p0, [g], wd, True, lr, 0.9, eta)).abs().max() > 1e-3
    torch.testing.assert_close(timm_step(0.0, True), _by_hand(p0, [g], 0.0, True, lr, 0.9, eta))


def test_timm_cosine_scheduler_differs_only_in_warmup():
    from timm.scheduler import CosineLRScheduler

    epochs, spe, warmup = 20, 5, 10
    ours = cosine_schedule(1.92, 0.0048, epochs, spe, warmup, 0.0)
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.92)
    timm_s = CosineLRScheduler(
        optimizer,
        t_initial=(epochs - warmup) * spe,
        lr_min=0.0048,
        warmup_t=warmup * spe,
        warmup_lr_init=0.0,
        warmup_prefix=True,
        t_in_epochs=False,
    )
    theirs = []
    for i in range(epochs * spe):
        timm_s.step_update(i)
        theirs.append(optimizer.param_groups[0]["lr"])
    theirs = np.array(theirs)
    np.testing.assert_allclose(theirs[warmup * spe :], ours[warmup * spe :], rtol=0, atol=1e-12)
    assert abs(theirs[warmup * spe - 1] - ours[warmup * spe - 1]) > 0.03  # 1.8816 vs 1.92


def test_optimizer_state_round_trips_for_resume():
    model, other = _toy(), _toy(seed=1)
    optimizer = build_optimizer(model, OptimConfig())
    set_lr_and_weight_decay(optimizer, 0.1, 1e-6)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    optimizer.step()
    restored = build_optimizer(other, OptimConfig())
    restored.load_state_dict(optimizer.state_dict())
    assert [g["kind"] for g in restored.param_groups] == ["regular", "no_decay", "depthwise"]
    for a, b in zip(model.parameters(), other.parameters(), strict=True):
        torch.testing.assert_close(restored.state[b]["mu"], optimizer.state[a]["mu"])
