"""The DINO projection head's hidden layers, shared by pre-training (DINOHead, pretrain/methods/dino.py)
and semi-supervised fine-tuning (which puts its classifier on them, semisup/model.py)."""

from __future__ import annotations

from torch import nn


def projection_layers(in_dim: int, hidden_dim: int, use_bn: bool) -> list[nn.Module]:
    """DINOHead.mlp's two hidden layers, Linear-[BN]-GELU twice, with nn.Linear's default init, in
    DINOHead.mlp's order, so a DINO head's ``mlp.*`` keys load into them as they are."""
    layers: list[nn.Module] = []
    for width_in in (in_dim, hidden_dim):
        layers.append(nn.Linear(width_in, hidden_dim))
        if use_bn:
            layers.append(nn.BatchNorm1d(hidden_dim))
        layers.append(nn.GELU())
    return layers
