"""Detectron2 compatibility layer: apply it before the first ``import detectron2``.

lowssl installs Detectron2 0.6's Python package without its compiled extension (no wheel exists on
the registries we reach; see ``tools/install_detectron2.sh``). Mask R-CNN FPN with axis-aligned
boxes does not need the extension: torchvision provides NMS and ROIAlign. Two things are patched:

1. ``detectron2._C``: a stand-in module is registered when the compiled one cannot be imported.
   Every op in :data:`MISSING_OPS` raises :class:`MissingCompiledOpError`, which names the op, what
   needs it and the fix. Anything else is an ``AttributeError``, as with a real module.
2. ``PIL.Image.LINEAR``: Detectron2 0.6 reads it at import time as a default argument; Pillow 10
   removed it (it was an alias of ``BILINEAR``). We add the alias rather than pin an old Pillow:
   Pillow < 10.2 has known security issues.

Where a full Detectron2 with compiled ops is importable, :func:`apply` changes nothing but the
Pillow alias, which that install needs as well.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import types

#: Ops that live in Detectron2's compiled extension, with what uses them.
MISSING_OPS: dict[str, str] = {
    "deform_conv_forward": "deformable convolution (DeformConv)",
    "deform_conv_backward_input": "deformable convolution (DeformConv)",
    "deform_conv_backward_filter": "deformable convolution (DeformConv)",
    "modulated_deform_conv_forward": "modulated deformable convolution (ModulatedDeformConv)",
    "modulated_deform_conv_backward": "modulated deformable convolution (ModulatedDeformConv)",
    "box_iou_rotated": "rotated boxes (pairwise_iou_rotated)",
    "nms_rotated": "rotated boxes (nms_rotated)",
    "roi_align_rotated_forward": "rotated ROIAlign (ROIAlignRotated)",
    "roi_align_rotated_backward": "rotated ROIAlign (ROIAlignRotated)",
    "COCOevalEvaluateImages": "the fast C++ COCOeval (COCOEvaluator(use_fast_impl=True))",
    "COCOevalAccumulate": "the fast C++ COCOeval (COCOEvaluator(use_fast_impl=True))",
    "InstanceAnnotation": "the fast C++ COCOeval (COCOEvaluator(use_fast_impl=True))",
    "get_compiler_version": "detectron2.utils.collect_env",
    "get_cuda_version": "detectron2.utils.collect_env",
    "has_cuda": "detectron2.utils.collect_env",
}

FALLBACK_MODULE = "detectron2._C"


class MissingCompiledOpError(RuntimeError):
    """A Detectron2 op that needs the compiled extension was called without it."""


def _missing_op(name: str):
    def raise_missing(*args, **kwargs):
        raise MissingCompiledOpError(
            f"Detectron2 op '{name}' ({MISSING_OPS[name]}) needs Detectron2's compiled extension, "
            "which lowssl's default install does not have. Mask R-CNN FPN with axis-aligned boxes "
            "does not use it; for COCO evaluation pass use_fast_impl=False (lowssl does). To use this "
            "op, build Detectron2 from source (https://detectron2.readthedocs.io/en/latest/tutorials/"
            "install.html) into the same environment: lowssl then uses it unchanged."
        )

    raise_missing.__name__ = name
    return raise_missing


def _fallback_extension() -> types.ModuleType:
    module = types.ModuleType(FALLBACK_MODULE, "lowssl stand-in for Detectron2's missing compiled ops.")
    module.__file__ = __file__
    module.LOWSSL_FALLBACK = True
    for name in MISSING_OPS:
        setattr(module, name, _missing_op(name))
    return module


def has_compiled_ops() -> bool:
    """True when a real compiled ``detectron2._C`` is installed (not lowssl's stand-in)."""
    module = sys.modules.get(FALLBACK_MODULE)
    if module is not None:
        return not getattr(module, "LOWSSL_FALLBACK", False)
    # Looked for in the package's folder, not through find_spec("detectron2._C"), which would import
    # detectron2 itself: importing lowssl.detection imports no Detectron2 (detection/archs.py).
    package = importlib.util.find_spec("detectron2")
    if package is None:  # detectron2 itself is not installed
        return False
    return (
        importlib.machinery.PathFinder.find_spec(FALLBACK_MODULE, package.submodule_search_locations)
        is not None
    )


def apply() -> None:
    """Make Detectron2 0.6 importable here; idempotent, and a no-op for what is already fine."""
    from PIL import Image

    if not hasattr(Image, "LINEAR"):
        Image.LINEAR = Image.BILINEAR
    if importlib.util.find_spec("detectron2") is None:
        raise ModuleNotFoundError(
            "Detectron2 is not installed. Run `make install` (it installs Detectron2 0.6's Python "
            "package through tools/install_detectron2.sh), or build Detectron2 from source."
        )
    if FALLBACK_MODULE not in sys.modules and not has_compiled_ops():
        sys.modules[FALLBACK_MODULE] = _fallback_extension()
        _register_missing_torch_ops()


_TORCH_OPS_LIBRARY = []  # keeps the torch.library registration alive


def _register_missing_torch_ops() -> None:
    """``detectron2.layers.nms_rotated`` calls ``torch.ops.detectron2.nms_rotated`` directly."""
    import torch

    library = torch.library.Library("detectron2", "DEF")
    library.define("nms_rotated(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor")
    library.impl("nms_rotated", _missing_op("nms_rotated"), "CompositeExplicitAutograd")
    _TORCH_OPS_LIBRARY.append(library)
