"""Multi-crop views for DINO, SwAV and MoCo-v2*, and the pixel-scale tool of the paper's Sec. 3.2.2.

- :mod:`~pretrain.views.config`: the ``views:`` config and the :class:`ViewPlan` resolved from it once
  (:func:`resolve_views`), which every path below consumes;
- :mod:`~pretrain.views.sampler`: the random draws of a view (crop box, augmentation parameters), as
  DINO's pipeline makes them, the crop box by :mod:`~pretrain.views.crop`; :mod:`~pretrain.views.collate`:
  batching;
- :mod:`~pretrain.views.cpu`: :class:`MultiCropViews`, the whole augmentation on the CPU (OpenCV);
- :mod:`~pretrain.views.gpu`: the split path, crops in the loader (:class:`CropViews`) and the colour
  augmentation on the device (:class:`GpuViewAugment`);
- :mod:`~pretrain.views.pixel_scale`: :func:`pixel_scale_stats` (``python -m lowssl.pretrain.views
  pixel-scale``);
- :mod:`~pretrain.views.reference`: DINO's reference pipeline, which the tests and
  ``benchmarks/augmentation.py`` compare against.
"""

from lowssl.pretrain.views.collate import collate_views
from lowssl.pretrain.views.config import ViewPlan, ViewsConfig, resolve_views
from lowssl.pretrain.views.cpu import MultiCropViews
from lowssl.pretrain.views.gpu import CropViews, GpuViewAugment
from lowssl.pretrain.views.pixel_scale import pixel_scale_stats

__all__ = [
    "CropViews",
    "GpuViewAugment",
    "MultiCropViews",
    "ViewPlan",
    "ViewsConfig",
    "collate_views",
    "pixel_scale_stats",
    "resolve_views",
]
