"""Every registered backbone against paper Table 3 and against the plain torchvision / timm model.

FLOP counts (one multiply-add = one FLOP, 224 px, no classifier):

- CNNs: fvcore counts convolutions (MobileNetV2 0.300 G, R50 4.087 G), batch norm in eval mode
  (0.013 / 0.022 G) and the global pool, and skips activations, max-pool and residual additions:
  measured 0.313 / 1.819 / 3.671 / 4.109 G against the paper's 0.31 / 1.8 / 3.67 / 4.12 for
  MobileNetV2 / R18 / R34 / R50 (all within 1.1%).
- ViTs: the paper quotes DeiT's counts (ViT-Ti 1.26 G, ViT-S 4.61 G), which include the two
  attention matrix products per block, ``q @ k^T`` and ``attn @ v`` (2 x N^2 x D multiply-adds for
  N = 197 tokens, D = 192 / 384: 0.179 G / 0.358 G over 12 blocks). timm computes attention with the
  fused ``torch.nn.functional.scaled_dot_product_attention``, which fvcore 0.1.5 has no handler for:
  it skips that op (listed in ``unsupported_ops()``), so ``count_gflops`` gives 1.079 / 4.250 G
  (``by_operator()``: linear 1.046 / 4.183, conv 0.029 / 0.058, layer_norm 0.005 / 0.009). Those two
  products are the whole gap: 1.079 + 0.179 = 1.258 and 4.250 + 0.358 = 4.608. Neither count includes
  softmax, GELU, the residual additions or the attention scaling (fvcore skips element-wise ops; with
  the unfused attention path it also skips ``aten::softmax`` and ``aten::mul``, and counts the two
  products as ``matmul``, giving the same 1.258 / 4.608). ``count_gflops`` adds the missing handler
  by default and so reproduces the paper's ViT numbers; ``count_attention=False`` gives fvcore's
  plain count (for a CNN the two are equal).
"""

from __future__ import annotations

import functools

import pytest
import timm
import torch
import torchvision
from torch import nn

from lowssl.backbones import available, build_backbone, count_gflops, count_params_m, get_spec

NAMES = available()
VITS = [n for n in NAMES if get_spec(n).family == "vit"]
TOLERANCE = 0.03

# fvcore's count with timm's fused attention (scaled_dot_product_attention not counted), measured
# with fvcore 0.1.5.post20221221 and timm 1.0.31; see the module docstring.
FVCORE_VIT_GFLOPS = {"vit_tiny_patch16_224": 1.079, "vit_small_patch16_224": 4.250}


@functools.cache
def _backbone(name: str) -> nn.Module:
    torch.manual_seed(0)
    return build_backbone(name).eval()


def _plain_model(name: str) -> nn.Module:
    """The same architecture from torchvision / timm, with its classifier (on the meta device:
    names and shapes only, no initialisation cost)."""
    with torch.device("meta"):
        if hasattr(torchvision.models, name):
            return getattr(torchvision.models, name)(weights=None)
        if timm.is_model(name):
            return timm.create_model(name, pretrained=False)
    pytest.fail(f"no plain torchvision / timm model called '{name}' to compare the backbone with")


def _classifier_prefix(model: nn.Module) -> str:
    """Name of the model's final classifier: its last nn.Linear (fc, classifier.1, head)."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", [224, 128, 96])
def test_feature_dim_at_global_and_local_sizes(name, size):
    with torch.no_grad():
        out = _backbone(name)(torch.randn(1, 3, size, size))
    assert out.shape == (1, get_spec(name).feature_dim)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_classifier_removed_and_keys_load_into_plain_model(name):
    state = _backbone(name).state_dict()
    plain = _plain_model(name)
    prefix = _classifier_prefix(plain)
    assert not any(k == prefix or k.startswith(prefix + ".") for k in state), f"classifier '{prefix}' kept"
    result = plain.load_state_dict(state, strict=False, assign=True)
    assert result.unexpected_keys == []
    assert sorted(result.missing_keys) == [f"{prefix}.bias", f"{prefix}.weight"]


@pytest.mark.parametrize("name", NAMES)
def test_parameter_count_matches_paper(name):
    spec = get_spec(name)
    assert count_params_m(_backbone(name)) == pytest.approx(spec.paper_params_m, rel=TOLERANCE)


@pytest.mark.parametrize("name", NAMES)
def test_fvcore_plain_gflops(name):
    """CNNs: the paper's count. ViTs: fvcore's count without the fused attention products."""
    spec = get_spec(name)
    if spec.family == "cnn":
        expected = spec.paper_gflops
    elif name in FVCORE_VIT_GFLOPS:
        expected = FVCORE_VIT_GFLOPS[name]
    else:
        pytest.fail(f"measure fvcore's count for the new ViT '{name}' and add it to FVCORE_VIT_GFLOPS")
    assert count_gflops(_backbone(name), count_attention=False) == pytest.approx(expected, rel=TOLERANCE)


@pytest.mark.parametrize("name", VITS)
def test_gflops_with_attention_products_match_paper(name):
    """(CNNs have no attention: their plain count is already checked against the paper above.)"""
    assert count_gflops(_backbone(name)) == pytest.approx(get_spec(name).paper_gflops, rel=TOLERANCE)


def _dino_tokens(vit: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """What DINO's / the authors' ``prepare_tokens`` adds up before the first block, written from
    facebookresearch/dino:vision_transformer.py (``interpolate_pos_encoding``): bicubic, no antialias,
    ``scale_factor = (size // patch + 0.1) / sqrt(N)``."""
    patches = vit.patch_embed.proj(images).flatten(2).transpose(1, 2)
    tokens = torch.cat([vit.cls_token.expand(len(images), -1, -1), patches], dim=1)
    n, dim = vit.pos_embed.shape[1] - 1, vit.pos_embed.shape[2]
    side = int(n**0.5)
    w0 = h0 = images.shape[-1] // 16 + 0.1
    if tokens.shape[1] - 1 == n:
        return tokens + vit.pos_embed
    grid = nn.functional.interpolate(
        vit.pos_embed[:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2),
        scale_factor=(w0 / side, h0 / side),
        mode="bicubic",
    )
    assert grid.shape[-2:] == (int(w0), int(h0))
    return tokens + torch.cat([vit.pos_embed[:, :1], grid.permute(0, 2, 3, 1).reshape(1, -1, dim)], dim=1)


@pytest.mark.parametrize("name", VITS)
@pytest.mark.parametrize("size", [224, 128, 96, 32])
def test_vit_position_embeddings_are_interpolated_as_the_authors_do(name, size):
    vit = _backbone(name)
    seen = []
    hook = vit.pos_drop.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    images = torch.randn(2, 3, size, size)
    with torch.no_grad():
        vit(images)
        expected = _dino_tokens(vit, images)
    hook.remove()
    # Same operations in the same order: equal to float32 rounding (measured max |diff| 0 on this CPU).
    torch.testing.assert_close(seen[0], expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", VITS)
def test_vit_class_token_is_initialised_as_the_authors_do(name):
    # trunc_normal_(std=.02) (saic-fi/SSLight vision_transformer.py), not timm's normal_(std=1e-6).
    torch.manual_seed(0)
    cls_token = build_backbone(name).cls_token
    assert 0.015 < cls_token.std().item() < 0.025  # timm's would be ~1e-6
