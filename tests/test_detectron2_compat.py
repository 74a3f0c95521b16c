"""Detectron2 through lowssl's compatibility layer: imports, trains and infers on CPU."""

import sys
import types

import pytest
import torch

from lowssl.detection import compat  # applies the layer before any detectron2 import


def _mask_rcnn_r18_fpn():
    from detectron2.config import get_cfg
    from detectron2.model_zoo import get_config_file
    from detectron2.modeling import build_model

    cfg = get_cfg()
    cfg.merge_from_file(get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    # docs/detection.md, "ResNet18 and ResNet34": Detectron2's ResNet at depth 18.
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 32
    cfg.MODEL.RPN.BATCH_SIZE_PER_IMAGE = 32
    return build_model(cfg)


def _sample(seed):
    from detectron2.structures import Boxes, Instances, PolygonMasks

    generator = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 255, (3, 96, 128), dtype=torch.uint8, generator=generator)
    instances = Instances((96, 128))
    instances.gt_boxes = Boxes(torch.tensor([[10.0, 10.0, 50.0, 60.0]]))
    instances.gt_classes = torch.tensor([1])
    instances.gt_masks = PolygonMasks([[[10, 10, 50, 10, 50, 60, 10, 60]]])
    return {"image": image, "instances": instances, "height": 96, "width": 128}


def test_mask_rcnn_r18_fpn_trains_one_step_and_infers_on_cpu():
    from detectron2.utils.events import EventStorage

    torch.manual_seed(0)
    model = _mask_rcnn_r18_fpn()
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with EventStorage(0):
        losses = model([_sample(0), _sample(1)])
    assert {"loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls", "loss_rpn_loc"} <= set(losses)
    total = sum(losses.values())
    assert torch.isfinite(total)
    before = model.backbone.bottom_up.stem.conv1.weight.detach().clone()
    total.backward()
    optimizer.step()
    assert not torch.equal(before, model.backbone.bottom_up.stem.conv1.weight)

    model.eval()
    with torch.no_grad():
        outputs = model([{"image": _sample(2)["image"], "height": 96, "width": 128}])
    instances = outputs[0]["instances"]
    assert {"pred_boxes", "scores", "pred_classes", "pred_masks"} <= set(instances.get_fields())


def test_missing_compiled_op_fails_with_clear_message():
    if compat.has_compiled_ops():
        pytest.skip("a full Detectron2 with compiled ops is installed")
    from detectron2.layers import nms_rotated
    from detectron2.layers.rotated_boxes import pairwise_iou_rotated

    with pytest.raises(compat.MissingCompiledOpError, match="box_iou_rotated.*compiled extension"):
        pairwise_iou_rotated(torch.zeros(1, 5), torch.zeros(1, 5))
    with pytest.raises(compat.MissingCompiledOpError, match="nms_rotated"):
        nms_rotated(torch.zeros(1, 5), torch.zeros(1), 0.5)


def test_fast_cocoeval_op_names_the_workaround():
    if compat.has_compiled_ops():
        pytest.skip("a full Detectron2 with compiled ops is installed")
    from detectron2 import _C

    with pytest.raises(compat.MissingCompiledOpError, match="use_fast_impl=False"):
        _C.COCOevalAccumulate(None, None)
    with pytest.raises(AttributeError):
        _C.not_an_op  # noqa: B018 - an unknown name stays an AttributeError, as with a real module


def test_pillow_linear_alias_is_bilinear():
    from PIL import Image

    assert Image.LINEAR == Image.BILINEAR


def test_full_detectron2_is_left_untouched(monkeypatch):
    real = types.ModuleType("detectron2._C")
    monkeypatch.setitem(sys.modules, "detectron2._C", real)
    compat.apply()
    assert sys.modules["detectron2._C"] is real
    assert compat.has_compiled_ops()
