"""``python -m lowssl.evaluate export --checkpoint PATH --to {torchvision,timm,safetensors} --out FILE``: a
checkpoint's backbone alone (any format evaluate reads, any branch), for the tool that will load it."""

from __future__ import annotations

import argparse

from lowssl.checkpoints import open_from_arguments
from lowssl.export import export_backbone


def export_main(args: argparse.Namespace) -> int:
    opened = open_from_arguments(args)
    written = export_backbone(opened, args.to, args.out)
    print(
        f"{opened.arch} backbone ({opened.format}, branch {opened.branch}, {opened.loaded} tensors) -> {written}"
    )
    return 0
