"""Detection configs against the authors' (SSLight's), and the errors a mismatched config or dataset
gives before training, read from the built model and the prepared datasets."""

from __future__ import annotations

# Importing `detection` first applies its compatibility layer, which detectron2's imports need.
# isort: off
from lowssl.detection import compat  # noqa: F401

# isort: on
import json

import pytest
from detectron2.modeling import build_backbone, build_model
from test_detection import dataset_opts
from torch import nn

from lowssl.data import DatasetError
from lowssl.detection.config import CONFIG_DIR, load_config
from lowssl.detection.datasets import check_polygon_masks, prepare_datasets
from lowssl.detection.fmnist_det import FmnistDetSpec, annotation_file, generate

MOBILENET_COCO = sorted(
    path
    for pattern in ("mask_rcnn_mobilenet_v2_*.yaml", "faster_rcnn_mobilenet_v2_*.yaml")
    for path in CONFIG_DIR.glob(pattern)
    if not path.stem.endswith("_tiny")
)
DATASET_SPEC = FmnistDetSpec(train_images=2, val_images=2, seed=0, canvas=64)
EMBEDDED = ["DATASETS.TRAIN", '("lowssl_fmnist_det_train",)', "DATASETS.TEST", '("lowssl_fmnist_det_val",)']


pytestmark = pytest.mark.usefixtures("one_thread_per_module")


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("fmnist_det"), DATASET_SPEC)


def embedded_opts(root) -> list[str]:
    return [*EMBEDDED, *dataset_opts(root, DATASET_SPEC)]


# ---- RPN proposals kept in training -------------------------------------------------------------------


def test_every_mobilenet_coco_config_is_covered():
    assert len(MOBILENET_COCO) == 8  # {mask, faster} x {fpn, p2p6} x {1x, 2x}


@pytest.mark.parametrize("path", MOBILENET_COCO, ids=lambda path: path.stem)
def test_mobilenet_rpn_keeps_2000_proposals_in_training_as_the_authors_base(path):
    model = build_model(load_config(path, ["MODEL.DEVICE", "cpu"]))
    assert model.proposal_generator.post_nms_topk[True] == 2000
    assert model.proposal_generator.post_nms_topk[False] == 1000


def test_resnet_rpn_keeps_1000_proposals_in_training_as_the_authors_base():
    model = build_model(load_config(CONFIG_DIR / "mask_rcnn_resnet18_fpn_1x.yaml", ["MODEL.DEVICE", "cpu"]))
    assert model.proposal_generator.post_nms_topk[True] == 1000


# ---- MODEL.BACKBONE.FREEZE_AT past the last MobileNetV2 stage ---------------------------------------------


def _bottom_up(freeze_at: int) -> nn.Module:
    cfg = load_config(
        CONFIG_DIR / "mask_rcnn_mobilenet_v2_fpn_tiny.yaml", ["MODEL.BACKBONE.FREEZE_AT", str(freeze_at)]
    )
    return build_backbone(cfg).bottom_up


@pytest.mark.parametrize("freeze_at", [5, 6, 100])
def test_freeze_at_the_last_stage_or_past_it_freezes_the_whole_mobilenet_as_the_authors(freeze_at):
    bottom_up = _bottom_up(freeze_at)
    assert not any(parameter.requires_grad for parameter in bottom_up.parameters())
    assert not any(isinstance(module, nn.BatchNorm2d) for module in bottom_up.modules())


def test_freeze_at_4_leaves_the_last_stage_trainable():
    bottom_up = _bottom_up(4)
    trainable = {name.split(".")[1] for name, p in bottom_up.named_parameters() if p.requires_grad}
    assert trainable == {str(index) for index in range(14, 19)}  # features[14..18]: the stride-32 stage


# ---- INPUT.MASK_FORMAT against the embedded set's RLE masks ---------------------------------------------------


def test_polygon_mask_format_on_the_embedded_set_names_the_fix(dataset_root):
    cfg = load_config(
        CONFIG_DIR / "mask_rcnn_mobilenet_v2_fpn_1x.yaml",
        ["MODEL.DEVICE", "cpu", *embedded_opts(dataset_root)],
    )
    assert cfg.INPUT.MASK_FORMAT == "polygon"
    with pytest.raises(DatasetError) as error:
        prepare_datasets(cfg)
    message = str(error.value)
    for part in (
        "dataset lowssl_fmnist_det_train",
        "as RLE",
        "INPUT.MASK_FORMAT is 'polygon'",
        "add INPUT.MASK_FORMAT bitmask",
    ):
        assert part in message


@pytest.mark.parametrize(
    ("config", "opts"),
    [
        ("mask_rcnn_mobilenet_v2_fpn_1x.yaml", ["INPUT.MASK_FORMAT", "bitmask"]),
        ("faster_rcnn_mobilenet_v2_fpn_1x.yaml", []),  # no masks trained
        ("mask_rcnn_mobilenet_v2_fpn_tiny.yaml", []),  # bitmask already
    ],
)
def test_matching_mask_formats_prepare(dataset_root, config, opts):
    prepare_datasets(
        load_config(CONFIG_DIR / config, ["MODEL.DEVICE", "cpu", *embedded_opts(dataset_root), *opts])
    )


def test_polygon_files_pass_and_crowd_rle_is_ignored(dataset_root):
    data = json.loads(annotation_file(dataset_root, "val").read_text())
    for annotation in data["annotations"]:
        x, y, w, h = annotation["bbox"]
        annotation["segmentation"] = [[x, y, x + w, y, x + w, y + h]]
    data["annotations"][0]["segmentation"] = {"size": [64, 64], "counts": "PP0"}
    data["annotations"][0]["iscrowd"] = 1  # Detectron2's mapper drops crowd annotations before masks
    check_polygon_masks(data, "polygons", "polygons.json")
    data["annotations"][0]["iscrowd"] = 0
    with pytest.raises(DatasetError, match=rf"annotation id {data['annotations'][0]['id']}\b"):
        check_polygon_masks(data, "polygons", "polygons.json")
