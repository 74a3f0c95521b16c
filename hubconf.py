"""torch.hub entry points: ``torch.hub.load("<this repo or its folder>", "lowssl_backbone", checkpoint=...)``.

model = torch.hub.load("/path/to/lowssl", "lowssl_backbone", source="local",
                       checkpoint="runs/dino_resnet18_ours/last.pth")
model = torch.hub.load("/path/to/lowssl", "lowssl_backbone", source="local",
                       checkpoint="sslight_resnet18_dino_200ep")  # a released checkpoint, by name
"""

dependencies = ["torch", "torchvision", "timm"]


def lowssl_backbone(checkpoint, arch=None, branch=None, format=None, trust_checkpoint=False):
    """A backbone (pooled features, eval mode) from any checkpoint lowssl reads or a released name
    (lowssl.export.load_backbone; formats: docs/checkpoints.md, names: docs/released.md)."""
    from lowssl.export import load_backbone

    return load_backbone(checkpoint, arch=arch, branch=branch, fmt=format, trust=trust_checkpoint)
