"""The fine-tuned network: backbone -> [projection MLP] -> a new Linear classifier.

Paper App. A: "we apply the classifier on the second layer of the MLP head" (as SimCLR and PAWS do):
the first two layers of the pre-trained DINO head, Linear-BN-GELU-Linear-BN-GELU (no BN for ViTs,
docs/recipes.md, "DINO"), keep their weights and BN statistics; the bottleneck Linear and the
weight-normalised last layer are dropped; a new Linear maps the hidden width to the classes. The
authors' code does the same (SSLight ``load_dino_cnn``: ``student.head.mlp.{0,1,3,4}``).

Where the checkpoint has no DINO head (most third-party files, lowssl MoCo / SwAV, whose heads have
another layout), the MLP can be built new (``head_source="new"``; the authors' code does that for its
SwAV / MoCo checkpoints), or the ``frozen-linear`` protocol used instead.
"""

from __future__ import annotations

from torch import Tensor, nn

from lowssl.backbones import get_spec
from lowssl.checkpoints import OpenedCheckpoint
from lowssl.errors import BadInput
from lowssl.heads import projection_layers

NEW_HEAD_HINT = (
    "Either fine-tune with new, randomly initialised MLP layers in its place (--new-head; the authors' "
    "code does this for its SwAV and MoCo checkpoints), or use --protocol linear-frozen (frozen backbone "
    "+ linear layer: DisCo's protocol behind its Table 7 numbers)."
)


class HeadError(BadInput, ValueError):
    """The checkpoint has no DINO projection head to put the classifier on; the message says what to do."""


def dino_head_layout(head_state: dict[str, Tensor]) -> tuple[int, bool]:
    """(hidden width, has BN) of a DINO head's state dict (``mlp.*``, ``last_layer.*``), or HeadError.

    DINOHead.mlp is Linear(d, h) [BN] GELU, Linear(h, h) [BN] GELU, Linear(h, bottleneck), so with BN
    the two layers are mlp.0, mlp.1 (BN), mlp.3, mlp.4 (BN); without BN mlp.0 and mlp.2.
    """
    weight = head_state.get("mlp.0.weight")
    if weight is None or weight.dim() != 2 or not any(k.startswith("last_layer.") for k in head_state):
        raise HeadError(f"its projection head is not a DINO head (keys: {', '.join(sorted(head_state)[:8])})")
    hidden = weight.shape[0]
    use_bn = "mlp.1.running_mean" in head_state
    second = head_state.get("mlp.3.weight" if use_bn else "mlp.2.weight")
    if second is None or tuple(second.shape) != (hidden, hidden):
        raise HeadError(f"its DINO head has no second {hidden}x{hidden} layer (a 1-layer head?)")
    return hidden, use_bn


def projection_mlp(in_dim: int, hidden: int, use_bn: bool) -> nn.Sequential:
    """DINOHead.mlp's first two layers, with its module indices, so a DINO head's keys load as they are."""
    return nn.Sequential(*projection_layers(in_dim, hidden, use_bn))


def pretrained_projection(adapted: OpenedCheckpoint, checkpoint: str) -> nn.Sequential:
    """The first two layers of the checkpoint's DINO head, weights and BN statistics loaded exactly."""
    where = f"checkpoint {checkpoint} (format {adapted.format}, branch {adapted.branch})"
    if adapted.head_state is None:
        raise HeadError(
            f"{where} holds no projection head: the paper's protocol puts the classifier on the second "
            f"layer of the pre-trained projection MLP (App. A). {NEW_HEAD_HINT}"
        )
    try:
        hidden, use_bn = dino_head_layout(adapted.head_state)
    except HeadError as error:
        raise HeadError(
            f"{where}: {error}; the paper's protocol needs a DINO head (App. A). {NEW_HEAD_HINT}"
        ) from None
    mlp = projection_mlp(get_spec(adapted.arch).feature_dim, hidden, use_bn)
    prefixes = tuple(f"mlp.{i}." for i, layer in enumerate(mlp) if not isinstance(layer, nn.GELU))
    state = {
        key[len("mlp.") :]: value for key, value in adapted.head_state.items() if key.startswith(prefixes)
    }
    mlp.load_state_dict(state, strict=True)  # every weight and BN statistic of both layers, or an error
    return mlp


def build_head(
    arch: str,
    head_source: str,
    adapted: OpenedCheckpoint | None,
    checkpoint: str | None,
    new_head_hidden_dim: int,
) -> tuple[nn.Module, int]:
    """(head, output width). ``head_source``: "checkpoint" (the pre-trained DINO head's first two
    layers), "new" (the same layout, freshly initialised) or "none" (frozen-linear: the pooled feature)."""
    spec = get_spec(arch)
    if head_source == "none":
        return nn.Identity(), spec.feature_dim
    if head_source == "checkpoint":
        head = pretrained_projection(adapted, checkpoint)
        return head, head[0].out_features
    # docs/recipes.md, "DINO": BN in the DINO head for CNNs, none for ViTs
    return projection_mlp(spec.feature_dim, new_head_hidden_dim, spec.family == "cnn"), new_head_hidden_dim


class SemiSupervisedNet(nn.Module):
    """backbone -> head (projection MLP, or nothing) -> a new Linear classifier; a frozen backbone
    stays in eval mode and gets no gradient."""

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        width: int,
        num_classes: int,
        classifier_init_std: float | None,
        freeze_backbone: bool,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.classifier = nn.Linear(width, num_classes)
        if classifier_init_std is not None:
            nn.init.normal_(self.classifier.weight, std=classifier_init_std)
            nn.init.zeros_(self.classifier.bias)
        self.freeze_backbone = freeze_backbone
        if freeze_backbone:
            backbone.requires_grad_(False)

    def train(self, mode: bool = True) -> SemiSupervisedNet:
        super().train(mode)
        if self.freeze_backbone:  # fixed BN statistics: the frozen-backbone protocol (DisCo, MoCo)
            self.backbone.eval()
        return self

    def forward(self, images: Tensor) -> Tensor:
        return self.classifier(self.head(self.backbone(images)))
