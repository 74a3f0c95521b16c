"""Detection stage: Detectron2 Mask R-CNN FPN on lowssl backbones.

Importing this package applies :mod:`detection.compat`, so Detectron2 imports work here with or
without its compiled ops; it imports no Detectron2 itself (detection/archs.py is read without it).
"""

from lowssl.detection import compat

compat.apply()
