"""lowssl: the shared bottom layer (backbones, data, checkpoints, records) and its Python API."""


def load_backbone(path_or_name, arch=None, branch=None, fmt=None, trust=False):
    """A backbone from a checkpoint file of any supported format or a released name
    (:func:`lowssl.export.load_backbone`; imported on call, so ``import lowssl`` stays light)."""
    from lowssl.export import load_backbone as load

    return load(path_or_name, arch=arch, branch=branch, fmt=fmt, trust=trust)
