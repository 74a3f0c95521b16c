"""Datasets by name for Detectron2: COCO 2017 from ``$COCO_ROOT`` and the embedded Fashion-MNIST set,
a check of COCO annotation files that names the offending image or annotation id, and one of their
mask encoding against the config's INPUT.MASK_FORMAT.

Detectron2 registers ``coco_2017_*`` itself, under ``$DETECTRON2_DATASETS``; lowssl's names
(``lowssl_coco_2017_*``) read the standard COCO layout under ``$COCO_ROOT`` instead.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

from lowssl.data import DatasetError
from lowssl.detection import fmnist_det
from lowssl.paths import home

COCO_ROOT_ENV = "COCO_ROOT"
COCO_SPLITS = {"lowssl_coco_2017_train": "train2017", "lowssl_coco_2017_val": "val2017"}
FMNIST_SPLITS = {"lowssl_fmnist_det_train": "train", "lowssl_fmnist_det_val": "val"}
BOX_TOLERANCE = 1.0  # pixels a box may reach past the image border (float rounding in COCO files)

logger = logging.getLogger(__name__)


def register(name: str, json_file: str | Path, images: str | Path) -> None:
    """``register_coco_instances``, replacing an earlier registration of ``name`` (e.g. another root)."""
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_coco_instances(name, {}, str(json_file), str(images))


def coco_files(name: str, coco_root: str | Path | None = None) -> tuple[Path, Path]:
    """(annotation file, image folder) of a ``lowssl_coco_2017_*`` set under ``$COCO_ROOT``."""
    coco_root = coco_root or os.environ.get(COCO_ROOT_ENV)
    if not coco_root:
        raise DatasetError(
            f"dataset {name} needs ${COCO_ROOT_ENV}: the folder holding annotations/instances_"
            "{train,val}2017.json, train2017/ and val2017/ (the standard COCO 2017 layout)"
        )
    split = COCO_SPLITS[name]
    return Path(coco_root) / "annotations" / f"instances_{split}.json", Path(coco_root) / split


def fmnist_det_root(cfg: CfgNode) -> tuple[Path, fmnist_det.FmnistDetSpec]:
    node = cfg.LOWSSL.FMNIST_DET
    spec = fmnist_det.FmnistDetSpec(node.TRAIN_IMAGES, node.VAL_IMAGES, node.SEED, node.CANVAS)
    # Generated data goes under lowssl's home (``$LOWSSL_HOME`` or the working directory), never the package.
    default = (
        home()
        / "data"
        / "fmnist_det"
        / f"seed{spec.seed}_canvas{spec.canvas}_train{spec.train_images}_val{spec.val_images}"
    )
    return Path(node.ROOT) if node.ROOT else default, spec


def ensure_fmnist_det(cfg: CfgNode) -> Path:
    """The embedded set the config describes, generated if absent; a set made otherwise is an error."""
    root, spec = fmnist_det_root(cfg)
    recorded = fmnist_det.recorded_spec(root)
    if recorded is None:
        logger.info("generating the Fashion-MNIST detection set %s under %s", spec, root)
        fmnist_det.generate(root, spec)
    elif recorded != spec:
        raise DatasetError(
            f"{root} holds a Fashion-MNIST detection set made with {recorded}, but the config asks for "
            f"{spec} (LOWSSL.FMNIST_DET); point LOWSSL.FMNIST_DET.ROOT elsewhere or remove {root}"
        )
    return root


def dataset_files(cfg: CfgNode, name: str) -> tuple[Path, Path] | None:
    """(annotation file, image folder) of a lowssl dataset name; None for Detectron2's own names."""
    if name in COCO_SPLITS:
        return coco_files(name)
    if name in FMNIST_SPLITS:
        root, _ = fmnist_det_root(cfg)
        split = FMNIST_SPLITS[name]
        return fmnist_det.annotation_file(root, split), fmnist_det.image_root(root, split)
    return None


def _dataset_names(cfg: CfgNode) -> list[str]:
    return list(dict.fromkeys([*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST]))


def prepare_datasets(cfg: CfgNode) -> None:
    """Once per machine, before the training processes start: generate the embedded set if the config
    uses it and it is absent, then check every annotation file (LOWSSL.VALIDATE_DATASETS) and, when
    masks are trained as polygons, that the file stores polygons."""
    names = _dataset_names(cfg)
    if any(name in FMNIST_SPLITS for name in names):
        ensure_fmnist_det(cfg)
    check_masks = cfg.MODEL.MASK_ON and cfg.INPUT.MASK_FORMAT == "polygon"
    for name in names:
        files = dataset_files(cfg, name)
        if files is None or not (cfg.LOWSSL.VALIDATE_DATASETS or check_masks):
            continue
        data = read_coco_json(files[0])
        if cfg.LOWSSL.VALIDATE_DATASETS:
            check_coco(data, *files, need_masks=cfg.MODEL.MASK_ON)
        if check_masks:
            check_polygon_masks(data, name, files[0])


def register_datasets(cfg: CfgNode) -> None:
    """Register the lowssl datasets DATASETS.TRAIN / TEST name (in every process: catalogs are per process)."""
    for name in _dataset_names(cfg):
        files = dataset_files(cfg, name)
        if files is not None:
            register(name, *files)


def read_coco_json(json_file: str | Path) -> dict:
    json_file = Path(json_file)
    try:
        return json.loads(json_file.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise DatasetError(f"cannot read COCO annotation file {json_file}: {error}") from error


def validate_coco_json(json_file: str | Path, images: str | Path, need_masks: bool = True) -> None:
    """Raise :class:`DatasetError` naming the first image / annotation id a COCO file gets wrong
    (:func:`check_coco`)."""
    check_coco(read_coco_json(json_file), json_file, images, need_masks)


def check_coco(data: dict, json_file: str | Path, images: str | Path, need_masks: bool = True) -> None:
    """Raise :class:`DatasetError` naming the first image / annotation id of ``data`` (read from
    ``json_file``) that is wrong.

    Checked: every image file exists; every annotation names a known image and category, has a box
    of positive size inside its image (within :data:`BOX_TOLERANCE`) and, when masks are trained, a
    non-empty segmentation (a polygon of at least 3 points, or RLE of the image's size).
    """
    missing = [key for key in ("images", "annotations", "categories") if key not in data]
    if missing:
        raise DatasetError(f"{json_file} lacks {', '.join(missing)}: not a COCO instances file")
    category_ids = {category["id"] for category in data["categories"]}
    sizes = {}
    for image in data["images"]:
        path = Path(images) / image["file_name"]
        if not path.is_file():
            raise DatasetError(f"{json_file}: image id {image['id']}: file {path} does not exist")
        sizes[image["id"]] = (image["width"], image["height"])
    for annotation in data["annotations"]:
        problem = _annotation_problem(annotation, sizes, category_ids, need_masks)
        if problem:
            raise DatasetError(
                f"{json_file}: annotation id {annotation.get('id')} (image id {annotation.get('image_id')}): "
                f"{problem}"
            )


def check_polygon_masks(data: dict, name: str, json_file: str | Path) -> None:
    """INPUT.MASK_FORMAT polygon takes polygon segmentations only: Detectron2 fails on the first RLE
    one it meets in training (``Failed to use mask_format=='polygon'``); find it before training.

    Crowd annotations are left out: Detectron2's DatasetMapper drops them before making masks.
    """
    for annotation in data.get("annotations", []):
        if isinstance(annotation.get("segmentation"), dict) and not annotation.get("iscrowd", 0):
            raise DatasetError(
                f"dataset {name} ({json_file}) stores its masks as RLE (first at annotation id "
                f"{annotation.get('id')}), but the config's INPUT.MASK_FORMAT is 'polygon', which takes "
                "polygon segmentations only; add INPUT.MASK_FORMAT bitmask"
            )


def _annotation_problem(annotation: dict, sizes: dict, category_ids: set, need_masks: bool) -> str | None:
    if annotation.get("image_id") not in sizes:
        return "its image id is not in the file's images"
    if annotation.get("category_id") not in category_ids:
        return f"unknown category id {annotation.get('category_id')} (known: {sorted(category_ids)})"
    width, height = sizes[annotation["image_id"]]
    box = annotation.get("bbox")
    if not (isinstance(box, list) and len(box) == 4):
        return f"bbox {box!r} is not [x, y, width, height]"
    x, y, w, h = box
    if w <= 0 or h <= 0:
        return f"bbox {box} has no area"
    if (
        x < -BOX_TOLERANCE
        or y < -BOX_TOLERANCE
        or x + w > width + BOX_TOLERANCE
        or y + h > height + BOX_TOLERANCE
    ):
        return f"bbox {box} lies outside its {width}x{height} image"
    if not need_masks:
        return None
    segmentation = annotation.get("segmentation")
    if isinstance(segmentation, dict):
        if not segmentation.get("counts") or list(segmentation.get("size", [])) != [height, width]:
            return f"RLE segmentation is empty or not of the image's size {height}x{width}"
    elif not (
        isinstance(segmentation, list)
        and any(
            isinstance(polygon, list) and len(polygon) >= 6 and len(polygon) % 2 == 0
            for polygon in segmentation
        )
    ):  # fmt: skip - Detectron2 drops the other polygons of a list, and the whole annotation without one
        return "empty segmentation (no polygon of at least 3 points, no RLE)"
    return None
