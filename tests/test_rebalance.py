"""Loss re-balancing, paper Sec. 3.2.4: Eq. 2 (plain mean over pairs) and Eq. 3 (alpha-weighted means)."""

import math

import pytest
import torch

from lowssl.config import ConfigError, from_dict
from lowssl.pretrain.methods import DinoConfig, MocoConfig, SwavConfig, effective_alpha, rebalance

# Dyadic numbers: every sum below is exact in float32, so "exactly" can mean bitwise equal.
GG = torch.tensor([1.0, 3.0])  # P_gg = 2
GL = torch.tensor([2.0, 0.5, 1.5, 4.0, 0.0, 1.0, 2.5, 0.5])  # P_gl = 8


def test_eq3_on_hand_numbers():
    loss = rebalance(GG.sum(), GL.sum(), 2, 8, alpha=0.4)
    # 0.4 * (1 + 3) / 2 + 0.6 * 12 / 8 = 0.8 + 0.9
    assert loss.item() == pytest.approx(1.7, abs=1e-6)


def test_eq2_is_the_plain_mean_over_all_pairs_exactly():
    loss = rebalance(GG.sum(), GL.sum(), 2, 8, alpha=None)
    assert torch.equal(loss, torch.cat([GG, GL]).mean())
    assert loss.item() == pytest.approx(16 / 10)


def test_eq3_with_eq2_alpha_reproduces_eq2():
    alpha = effective_alpha(None, 2, 8)
    assert alpha == 2 / 10
    eq3 = rebalance(GG.sum(), GL.sum(), 2, 8, alpha=alpha)
    assert eq3.item() == pytest.approx(torch.cat([GG, GL]).mean().item(), rel=1e-6)


def test_paper_default_views_give_alpha_one_seventh():
    # Sec. 3.2.4: 2 globals, 6 locals -> P_gg = 2, P_gl = 12 -> Eq. 2 is alpha = 0.143.
    assert effective_alpha(None, 2, 12) == pytest.approx(1 / 7)
    assert round(effective_alpha(None, 2, 12), 3) == 0.143


def test_without_local_pairs_the_loss_is_the_global_mean():
    assert rebalance(GG.sum(), torch.tensor(0.0), 2, 0, alpha=0.4).item() == 2.0


def test_alpha_extremes_select_one_term():
    assert rebalance(GG.sum(), GL.sum(), 2, 8, alpha=1.0).item() == 2.0
    assert rebalance(GG.sum(), GL.sum(), 2, 8, alpha=0.0).item() == 1.5


@pytest.mark.parametrize("alpha", [-0.1, 1.5, math.nan, True, "eq2"])
def test_invalid_alpha_raises_config_error_naming_the_key(alpha):
    with pytest.raises(ConfigError, match=r"method\.alpha.*\[0, 1\]"):
        rebalance(GG.sum(), GL.sum(), 2, 8, alpha=alpha)


@pytest.mark.parametrize("config_class", [DinoConfig, SwavConfig, MocoConfig])
def test_method_configs_reject_alpha_under_their_section(config_class):
    with pytest.raises(ConfigError, match=r"'method\.alpha'.*\[0, 1\]"):
        from_dict(config_class, {"alpha": 1.5}, prefix="method")
    assert from_dict(config_class, {"alpha": 0.4}).alpha == 0.4
    assert from_dict(config_class, {"alpha": None}).alpha is None
    assert config_class().alpha is None  # default: Eq. 2, the baseline
