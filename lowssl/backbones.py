"""Backbone registry: torchvision / timm models by name, classifier removed, names kept.

Every backbone returns pooled features of size :attr:`BackboneSpec.feature_dim` for an input of any
resolution (the ViTs interpolate their position embeddings, which multi-crop local views need), and
keeps torchvision's / timm's parameter names so a lowssl checkpoint loads into a plain torchvision or
timm model (``strict=False`` for the dropped classifier) and vice versa.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import timm
import torch
import torchvision
from timm.layers import DropPath
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torch.nn import functional as F

from lowssl.registry import Registry


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    family: str  # "cnn" or "vit": selects LARS vs AdamW and the recipe variant (docs/recipes.md, "Backbones")
    feature_dim: int
    build: Callable[..., nn.Module]  # drop_path_rate=0.0 -> a new model
    # Paper Table 3 (params in millions, GFLOPs at 224 px, one multiply-add = one FLOP).
    paper_params_m: float
    paper_gflops: float


BACKBONES: Registry[BackboneSpec] = Registry("backbone")


def register(spec: BackboneSpec) -> BackboneSpec:
    return BACKBONES.register(spec.name, spec)


def unregister(name: str) -> None:
    """Remove ``name`` (a test's throwaway registration, tests/test_extending.py)."""
    BACKBONES.unregister(name)


def available() -> list[str]:
    return BACKBONES.names()


def get_spec(name: str) -> BackboneSpec:
    return BACKBONES.get(name)


def build_backbone(name: str, drop_path_rate: float = 0.0) -> nn.Module:
    """A randomly initialised backbone whose forward returns (batch, feature_dim) features.

    ``drop_path_rate`` is a ViT's stochastic depth: timm's (and DINO's) rule drops block ``i`` of ``d``
    with probability ``drop_path_rate * i / (d - 1)``, so the first block never. CNNs take only 0.
    """
    return get_spec(name).build(drop_path_rate=drop_path_rate)


def without_drop_path(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose timm DropPath modules are the identity that timm builds at rate 0:
    the same parameters under the same names, no stochastic depth (a DINO teacher of a ViT student)."""
    model = copy.deepcopy(model)
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, DropPath):
                setattr(module, name, nn.Identity())
    return model


def _torchvision_cnn(arch: str) -> Callable[..., nn.Module]:
    def build(drop_path_rate: float = 0.0) -> nn.Module:
        if drop_path_rate:
            raise ValueError(
                f"{arch} has no stochastic depth; drop_path_rate {drop_path_rate} is for the ViTs"
            )
        model = getattr(torchvision.models, arch)(weights=None)
        if hasattr(model, "fc"):
            model.fc = nn.Identity()
        else:  # MobileNetV2: classifier = Dropout, Linear
            model.classifier = nn.Identity()
        return model

    return build


def resample_position_embedding(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """The position embeddings (class token first) for a ``grid`` of patches, as the authors' and DINO's
    ``interpolate_pos_encoding`` computes them (saic-fi/SSLight@557e54a:src/sslight/backbone/
    vision_transformer.py; facebookresearch/dino:vision_transformer.py): bicubic without antialiasing,
    by ``scale_factor=(n + 0.1) / sqrt(N)``. timm's ``resample_abs_pos_embed`` resamples to the size
    itself with antialiasing, which gives other values for the smaller local crops; the paper is silent,
    so the authors' code decides."""
    height, width = grid
    patches = pos_embed.shape[1] - 1
    side = math.isqrt(patches)
    if (height, width) == (side, side):
        return pos_embed
    dim = pos_embed.shape[-1]
    grid_embed = F.interpolate(
        pos_embed[:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2),
        scale_factor=((height + 0.1) / side, (width + 0.1) / side),  # + 0.1: DINO's guard against rounding
        mode="bicubic",
    )
    return torch.cat([pos_embed[:, :1], grid_embed.permute(0, 2, 3, 1).reshape(1, -1, dim)], dim=1)


class AuthorsVisionTransformer(VisionTransformer):
    """timm's ViT (its modules and parameter names) with the authors' position-embedding interpolation
    for crops of any size (:func:`resample_position_embedding`). Holds for a class token and no register
    tokens, which every registered ViT has (checked at build)."""

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, dim = x.shape  # dynamic_img_size: patch tokens as a grid
        tokens = torch.cat([self.cls_token.expand(batch, -1, -1), x.reshape(batch, -1, dim)], dim=1)
        return self.pos_drop(tokens + resample_position_embedding(self.pos_embed, (height, width)))


def _timm_vit(arch: str) -> Callable[..., nn.Module]:
    def build(drop_path_rate: float = 0.0) -> nn.Module:
        # dynamic_img_size: local crops (96/128 px) get resampled position embeddings.
        model = timm.create_model(
            arch, pretrained=False, num_classes=0, dynamic_img_size=True, drop_path_rate=drop_path_rate
        )
        if not (model.has_class_token and model.num_prefix_tokens == 1 and not model.no_embed_class):
            raise ValueError(f"{arch}: the authors' position embedding needs one class token and no others")
        model.__class__ = AuthorsVisionTransformer  # same modules and weights; only _pos_embed differs
        # The authors' init of the class token: truncated normal, std 0.02 (timm: normal, std 1e-6);
        # saic-fi/SSLight@557e54a:src/sslight/backbone/vision_transformer.py, VisionTransformer.__init__.
        nn.init.trunc_normal_(model.cls_token, std=0.02)
        return model

    return build


for _name, _dim, _params, _gflops in [
    ("mobilenet_v2", 1280, 2.2, 0.31),
    ("resnet18", 512, 11.2, 1.8),
    ("resnet34", 512, 21.3, 3.67),
    ("resnet50", 2048, 23.5, 4.12),
]:
    register(BackboneSpec(_name, "cnn", _dim, _torchvision_cnn(_name), _params, _gflops))

for _name, _dim, _params, _gflops in [
    ("vit_tiny_patch16_224", 192, 5.5, 1.26),
    ("vit_small_patch16_224", 384, 21.7, 4.61),
]:
    register(BackboneSpec(_name, "vit", _dim, _timm_vit(_name), _params, _gflops))


def count_params_m(model: nn.Module) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


def _attention_flops(inputs, outputs) -> int:
    """Multiply-adds of ``scaled_dot_product_attention``: q @ k^T and attn @ v."""
    from fvcore.nn.jit_handles import get_shape

    q, k, v = (get_shape(x) for x in inputs[:3])
    return math.prod(q[:-2]) * q[-2] * k[-2] * (q[-1] + v[-1])


def count_gflops(model: nn.Module, image_size: int = 224, count_attention: bool = True) -> float:
    """fvcore's count (one multiply-add = one FLOP) for one image, in GFLOPs.

    fvcore 0.1.5 has no handler for the fused ``scaled_dot_product_attention`` that timm's ViTs call,
    so by itself it leaves out the two attention products of every block (ViT-Ti 1.08 instead of
    1.26 GFLOPs, ViT-S 4.25 instead of 4.61). ``count_attention`` (default) adds them, which gives the
    paper's Table 3 figures (DeiT's published counts); ``False`` reports fvcore's plain count. Neither
    counts softmax, GELU or residual additions; the CNNs are unaffected.
    """
    from fvcore.nn import FlopCountAnalysis

    was_training = model.training
    model.eval()
    analysis = FlopCountAnalysis(model, torch.zeros(1, 3, image_size, image_size))
    if count_attention:
        analysis.set_op_handle("aten::scaled_dot_product_attention", _attention_flops)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    total = analysis.total() / 1e9
    model.train(was_training)
    return total
