"""Detection stage: registered backbones inside Mask R-CNN FPN, configs, checkpoint conversion, the
embedded Fashion-MNIST set, COCO evaluation and the train command (docs/detection.md)."""

from __future__ import annotations

# Importing `detection` first applies its compatibility layer, which detectron2's imports need.
# isort: off
from lowssl.detection import compat

# isort: on
import argparse
import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog
from detectron2.evaluation import COCOEvaluator
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, BoxMode, Instances
from detectron2.utils.events import EventStorage
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from lowssl.backbones import build_backbone
from lowssl.data import DatasetError
from lowssl.detection.__main__ import main
from lowssl.detection.config import CONFIG_DIR, config_arch, load_config
from lowssl.detection.convert import BACKBONE_PREFIX, ConversionError, check_loads, resnet_to_detectron2
from lowssl.detection.datasets import ensure_fmnist_det, register, validate_coco_json
from lowssl.detection.fmnist_det import FmnistDetSpec, annotation_file, generate, image_root
from lowssl.detection.train import result_records, setup, weights_source
from lowssl.io import sha256_file
from lowssl.records import read_records, recorded_budget

TINY = {
    name: CONFIG_DIR / f"mask_rcnn_{name}_fpn_tiny.yaml"
    for name in ("mobilenet_v2", "mobilenet_v2_p2p6", "resnet18", "resnet34")
}
# Small enough for a few seconds per model on a busy CPU; the model itself is the config's.
SMALL_SAMPLING = [
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE",
    "16",
    "MODEL.RPN.BATCH_SIZE_PER_IMAGE",
    "32",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN",
    "50",
    "MODEL.RPN.POST_NMS_TOPK_TEST",
    "50",
]
DATASET_SPEC = FmnistDetSpec(train_images=6, val_images=4, seed=0, canvas=96)


pytestmark = pytest.mark.usefixtures("one_thread_per_module")


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("fmnist_det"), DATASET_SPEC)


def dataset_opts(root: Path, spec: FmnistDetSpec = DATASET_SPEC) -> list[str]:
    """Detectron2 overrides pointing the embedded set at ``root``, generated with ``spec``."""
    return [
        "LOWSSL.FMNIST_DET.ROOT",
        str(root),
        "LOWSSL.FMNIST_DET.TRAIN_IMAGES",
        str(spec.train_images),
        "LOWSSL.FMNIST_DET.VAL_IMAGES",
        str(spec.val_images),
        "LOWSSL.FMNIST_DET.CANVAS",
        str(spec.canvas),
    ]


# ---- configs and backbones ----------------------------------------------------------------------------


def test_configs_follow_the_paper_schedules():
    leaves = sorted(CONFIG_DIR.glob("[mf]*.yaml"))
    assert len(leaves) == 4 * 5  # 4 backbones x (mask 1x, 2x, tiny; box-only 1x, 2x)
    for path in leaves:
        cfg = load_config(path)
        schedule = path.stem.rsplit("_", 1)[1]
        assert cfg.LOWSSL.SCHEDULE == schedule, path
        assert cfg.MODEL.MASK_ON == path.name.startswith("mask_rcnn"), path
        assert cfg.MODEL.BACKBONE.FREEZE_AT == 0
        assert cfg.INPUT.FORMAT == "RGB"
        assert cfg.MODEL.PIXEL_MEAN == [123.675, 116.28, 103.53]
        assert cfg.MODEL.PIXEL_STD == [58.395, 57.12, 57.375]
        if schedule == "tiny":
            assert cfg.MODEL.DEVICE == "cpu" and cfg.DATASETS.TRAIN == ("lowssl_fmnist_det_train",)
            continue
        expected = {"1x": (90000, (60000, 80000)), "2x": (180000, (120000, 160000))}[schedule]
        assert (cfg.SOLVER.MAX_ITER, cfg.SOLVER.STEPS) == expected, path
        assert (cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.BASE_LR) == (16, 0.02)
        assert cfg.INPUT.MIN_SIZE_TRAIN == (640, 672, 704, 736, 768, 800) and cfg.INPUT.MIN_SIZE_TEST == 800
        assert cfg.DATASETS.TEST == ("lowssl_coco_2017_val",)
        backbone = "MOBILENET_V2" if "mobilenet" in path.name else "RESNETS"
        assert cfg.MODEL[backbone].NORM == "SyncBN"
        assert load_config(path, ["MODEL.DEVICE", "cpu"]).MODEL[backbone].NORM == "BN"  # one device: BN

    authors = load_config(CONFIG_DIR / "mask_rcnn_mobilenet_v2_fpn_1x.yaml")
    assert authors.MODEL.FPN.IN_FEATURES == ["stride16", "stride32"]
    assert authors.MODEL.ANCHOR_GENERATOR.SIZES == [[32, 64, 128], [64, 128, 256], [128, 256, 512]]
    assert authors.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS == [[0.5, 1.0, 2.0]]
    assert authors.MODEL.ROI_HEADS.IN_FEATURES == ["p4", "p5"]
    resnet = load_config(CONFIG_DIR / "mask_rcnn_resnet34_fpn_2x.yaml")
    assert (resnet.MODEL.RESNETS.DEPTH, resnet.MODEL.RESNETS.RES2_OUT_CHANNELS) == (34, 64)
    assert resnet.MODEL.RESNETS.STRIDE_IN_1X1 is False
    assert config_arch(resnet) == "resnet34" and config_arch(authors) == "mobilenet_v2"


def test_the_architectures_detection_takes_have_a_registered_builder_and_load_without_detectron2():
    from detectron2.modeling import BACKBONE_REGISTRY

    from lowssl.detection.archs import ARCH_CONFIGS, architectures

    assert architectures() == ("mobilenet_v2", "resnet18", "resnet34")
    for arch in architectures():
        cfg = load_config(ARCH_CONFIGS[arch])
        assert config_arch(cfg) == arch and BACKBONE_REGISTRY.get(cfg.MODEL.BACKBONE.NAME)
    # Other stages ask which architectures detection takes without loading Detectron2.
    probe = "import sys; from lowssl.detection.archs import architectures; architectures(); "
    probe += "assert 'detectron2' not in sys.modules, 'detectron2 imported'"
    subprocess.run([sys.executable, "-c", probe], check=True, timeout=120)


def _sample(seed: int, size: int = 80):
    generator = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 255, (3, size, size), dtype=torch.uint8, generator=generator)
    instances = Instances((size, size))
    instances.gt_boxes = Boxes(torch.tensor([[8.0, 10.0, 50.0, 60.0], [40.0, 30.0, 76.0, 70.0]]))
    instances.gt_classes = torch.tensor([1, 4])
    masks = torch.zeros(2, size, size, dtype=torch.bool)
    masks[0, 10:60, 8:50] = True
    masks[1, 30:70, 40:76] = True
    instances.gt_masks = BitMasks(masks)
    return {"image": image, "instances": instances, "height": size, "width": size}


EXPECTED_LEVELS = {
    "mobilenet_v2": ["p4", "p5", "p6"],
    "mobilenet_v2_p2p6": ["p2", "p3", "p4", "p5", "p6"],
    "resnet18": ["p2", "p3", "p4", "p5", "p6"],
    "resnet34": ["p2", "p3", "p4", "p5", "p6"],
}


@pytest.mark.parametrize("name", list(TINY))
def test_backbone_trains_one_step_and_infers_in_mask_rcnn_fpn(name):
    torch.manual_seed(0)
    model = build_model(load_config(TINY[name], SMALL_SAMPLING))
    assert list(model.backbone.output_shape()) == EXPECTED_LEVELS[name]
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    first = next(p for key, p in model.named_parameters() if key.startswith(BACKBONE_PREFIX))
    before = first.detach().clone()
    with EventStorage(0):
        losses = model([_sample(0), _sample(1)])
    assert {"loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls", "loss_rpn_loc"} <= set(losses)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    optimizer.step()
    assert not torch.equal(before, first)  # FREEZE_AT 0: the stem trains too

    model.eval()
    with torch.no_grad():
        outputs = model([{"image": _sample(2)["image"], "height": 80, "width": 80}])
    assert {"pred_boxes", "scores", "pred_classes", "pred_masks"} <= set(outputs[0]["instances"].get_fields())


def test_mobilenet_v2_stages_match_the_paper():
    from lowssl.detection.backbones import MobileNetV2

    shapes = MobileNetV2().output_shape()
    assert {name: (s.stride, s.channels) for name, s in shapes.items()} == {
        "stride2": (2, 16),
        "stride4": (4, 24),
        "stride8": (8, 32),
        "stride16": (16, 96),
        "stride32": (32, 1280),
    }
    names = set(MobileNetV2().state_dict())
    assert names == set(
        build_backbone("mobilenet_v2").state_dict()
    )  # torchvision's names, so conversion is a prefix


# ---- conversion -----------------------------------------------------------------------------------------


def _converted(tmp_path, checkpoint: dict, *extra: str) -> tuple[int, dict]:
    source = tmp_path / "source.pth"
    torch.save(checkpoint, source)
    out = tmp_path / "out.pkl"
    code = main(["convert", "--checkpoint", str(source), "--out", str(out), *extra])
    return code, (pickle.loads(out.read_bytes()) if out.exists() else {})


def _assert_loads_bit_identical(payload: dict, arch: str, source: dict[str, torch.Tensor], rename) -> None:
    assert len(payload["model"]) == len(source)
    for key, tensor in source.items():
        array = payload["model"][rename(key)]
        expected = tensor.numpy()
        assert array.dtype == expected.dtype and array.tobytes() == expected.tobytes(), key
    cfg = load_config(TINY[arch], ["MODEL.DEVICE", "cpu"])
    model = build_model(cfg)
    incompatible = DetectionCheckpointer(model)._load_model({**payload, "model": dict(payload["model"])})
    assert not [key for key in incompatible.missing_keys if key.startswith(BACKBONE_PREFIX)]
    assert not incompatible.unexpected_keys
    loaded = model.backbone.bottom_up.state_dict()
    for key, tensor in source.items():
        assert torch.equal(loaded[rename(key)], tensor), key


def test_convert_lowssl_checkpoint_mobilenet_v2(tmp_path):
    torch.manual_seed(1)
    student = build_backbone("mobilenet_v2").state_dict()
    checkpoint = {
        "format": "lowssl-pretrain-v1",
        "student_backbone": student,
        "teacher_backbone": build_backbone("mobilenet_v2").state_dict(),
        "backbone": "mobilenet_v2",
        "method": "dino",
        "recipe": "ours",
        "epoch": 3,
    }
    code, payload = _converted(tmp_path, checkpoint)
    assert code == 0
    assert payload["__author__"] == "lowssl" and payload["matching_heuristics"] is True
    meta = payload["lowssl"]
    assert (
        meta["format"],
        meta["arch"],
        meta["branch"],
        meta["method"],
        meta["recipe"],
        meta["pretrain_epochs"],
    ) == ("lowssl", "mobilenet_v2", "student", "dino", "ours", 3)
    assert meta["source_sha256"] == sha256_file(tmp_path / "source.pth")
    _assert_loads_bit_identical(payload, "mobilenet_v2", student, lambda key: key)


def test_convert_moco_checkpoint_resnet18_follows_mocos_names(tmp_path):
    torch.manual_seed(2)
    query = {key: value for key, value in build_backbone("resnet18").state_dict().items()}
    state = {f"module.encoder_q.{key}": value for key, value in query.items()}
    state["module.encoder_q.fc.0.weight"] = torch.zeros(512, 512)
    state["module.encoder_q.fc.2.weight"] = torch.zeros(128, 512)
    code, payload = _converted(tmp_path, {"epoch": 200, "arch": "resnet18", "state_dict": state})
    assert code == 0 and payload["lowssl"]["format"] == "moco"
    assert {
        "stem.conv1.weight",
        "stem.conv1.norm.running_var",
        "res2.0.conv1.norm.weight",
        "res3.0.shortcut.weight",
        "res3.0.shortcut.norm.bias",
        "res5.1.conv2.weight",
    } <= set(payload["model"])
    assert not any(key.startswith("fc") for key in payload["model"])
    _assert_loads_bit_identical(payload, "resnet18", query, resnet_to_detectron2)


def test_convert_fails_on_a_checkpoint_missing_backbone_keys(tmp_path, capsys):
    state = {
        f"module.encoder_q.{k}": v
        for k, v in build_backbone("resnet18").state_dict().items()
        if not k.startswith("layer4.1.")
    }
    code, payload = _converted(tmp_path, {"state_dict": state}, "--format", "moco")
    assert code == 2 and payload == {}
    err = capsys.readouterr().err
    assert "lacks" in err and "layer4.1.conv1.weight" in err


def test_convert_refuses_weights_of_another_architecture_and_nan_weights(tmp_path, capsys):
    """Before: ResNet34 weights converted --arch resnet18 printed "120 backbone tensors load into Mask
    R-CNN FPN, none missing" (96 ResNet34 keys left behind) and wrote the pickle."""
    resnet34 = torchvision.models.resnet34(weights=None).state_dict()
    code, payload = _converted(tmp_path, resnet34, "--arch", "resnet18")
    assert code == 2 and payload == {} and not (tmp_path / "out.pkl").exists()
    err = capsys.readouterr().err
    assert (
        "does not hold a resnet18: 96 backbone keys that resnet18 does not have: layer1.2.conv1.weight" in err
    )
    assert "pass --arch resnet34" in err
    state = build_backbone("resnet18").state_dict()
    state["layer3.1.conv2.weight"][0, 0, 0, 0] = float("inf")
    code, payload = _converted(tmp_path, state)
    assert code == 2 and payload == {}
    assert "hold NaN or inf (first: layer3.1.conv2.weight)" in capsys.readouterr().err


def test_load_check_names_keys_that_do_not_load():
    # torchvision names without MoCo's renaming: nothing matches Detectron2's ResNet.
    arrays = {key: value.numpy() for key, value in build_backbone("resnet18").state_dict().items()}
    with pytest.raises(ConversionError, match="backbone keys missing: .*stem.conv1"):
        check_loads({"model": arrays, "__author__": "lowssl", "matching_heuristics": True}, "resnet18")


def _records_from(weights: str, tmp_path) -> list:
    """The records ``detection train`` writes after training from ``weights``, for a made-up COCO result
    (the step after Detectron2's training, which test_train_command_writes_records runs)."""
    args = argparse.Namespace(
        config=str(TINY["resnet18"]),
        opts=["MODEL.DEVICE", "cpu"],
        weights=weights,
        output_dir=tmp_path / "run",
    )
    results = {task: {"AP": 1.0, "AP50": 2.0, "AP75": 3.0} for task in ("bbox", "segm")}
    return result_records(setup(args), args, weights_source(weights, "resnet18"), results, wall_s=1.0)


def test_the_pretraining_budget_travels_from_convert_to_the_detection_records(tmp_path):
    """Issue 28: the Detectron2 pickle carried method, recipe and epochs but not the pre-training
    budget, so detection records of a lowssl checkpoint had none and the leaderboard could pool
    checkpoints pre-trained on 1,500 and 3,000 images. Now convert writes it into payload["lowssl"] and
    train records it; a random init records "none", a pickle converted before budgets "" (unknown)."""
    torch.manual_seed(3)
    config = {"epochs": 2, "batch_size": 16, "data": {"dataset": "fashion-mnist", "subset": 1500}}
    code, payload = _converted(tmp_path, _lowssl_resnet18(config))
    assert code == 0
    budget = "1500 fashion-mnist images x 2 epochs, batch 16"
    assert payload["lowssl"]["pretrain_budget"] == budget
    for weights, expected in ((str(tmp_path / "out.pkl"), budget), ("none", "none")):
        records = _records_from(weights, tmp_path)
        assert {recorded_budget(record.details) for record in records} == {expected}
    del payload["lowssl"]["pretrain_budget"]
    (tmp_path / "older.pkl").write_bytes(pickle.dumps(payload))
    assert {recorded_budget(r.details) for r in _records_from(str(tmp_path / "older.pkl"), tmp_path)} == {""}


def test_train_refuses_a_damaged_lowssl_entry_in_one_line(tmp_path, capsys):
    """A pickle whose "lowssl" entry lacks a field, or holds a field of another type, stopped
    `detection train` with a KeyError traceback (or recorded the damage); now it exits 2 naming the file."""
    _converted(tmp_path, _lowssl_resnet18({}))
    payload = pickle.loads((tmp_path / "out.pkl").read_bytes())
    del payload["lowssl"]["arch"]
    payload["lowssl"]["pretrain_epochs"] = "3"
    damaged = tmp_path / "damaged.pkl"
    damaged.write_bytes(pickle.dumps(payload))
    code = main(
        ["train", "--config", str(TINY["resnet18"]), "--weights", str(damaged), "MODEL.DEVICE", "cpu"]
    )
    assert code == 2
    assert capsys.readouterr().err == (
        f"error: weights file {damaged}: its lowssl entry (what the weights came from) is damaged: arch is "
        "missing; pretrain_epochs is '3', not a whole number; convert the checkpoint again with `python -m "
        "lowssl.detection convert`\n"
    )


def _lowssl_resnet18(config: dict | None = None) -> dict:
    """A lowssl DINO ResNet18 checkpoint after one epoch (with its pre-training config, if given)."""
    checkpoint = {
        "format": "lowssl-pretrain-v1",
        "student_backbone": build_backbone("resnet18").state_dict(),
        "teacher_backbone": None,
        "backbone": "resnet18",
        "method": "dino",
        "recipe": "ours",
        "epoch": 1,
    }
    return checkpoint if config is None else {**checkpoint, "config": config}


# ---- the embedded dataset and evaluation ------------------------------------------------------------------


def test_generated_dataset_is_valid_coco_with_masks_inside_boxes(dataset_root, tmp_path):
    for split in ("train", "val"):
        coco = COCO(str(annotation_file(dataset_root, split)))
        assert len(coco.getImgIds()) == DATASET_SPEC.num_images(split)
        assert {c["id"] for c in coco.loadCats(coco.getCatIds())} == set(range(1, 11))
        for image_id in coco.getImgIds():
            annotations = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
            assert annotations, f"image {image_id} has no items"
            for annotation in annotations:
                mask = mask_util.decode(annotation["segmentation"])
                x, y, w, h = (int(v) for v in annotation["bbox"])
                assert mask.sum() == annotation["area"] > 0
                assert mask[y : y + h, x : x + w].sum() == mask.sum()  # nothing outside the box
                rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
                assert (cols[0], rows[0], cols[-1] + 1 - cols[0], rows[-1] + 1 - rows[0]) == (x, y, w, h)
        validate_coco_json(annotation_file(dataset_root, split), image_root(dataset_root, split))
    again = generate(tmp_path / "again", DATASET_SPEC)
    assert annotation_file(again, "val").read_text() == annotation_file(dataset_root, "val").read_text()


def test_generated_dataset_defaults_to_lowssl_home_not_the_package(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWSSL_HOME", str(tmp_path))
    sizes = {
        "TRAIN_IMAGES": DATASET_SPEC.train_images,
        "VAL_IMAGES": DATASET_SPEC.val_images,
        "CANVAS": DATASET_SPEC.canvas,
    }
    opts = [item for key, value in sizes.items() for item in (f"LOWSSL.FMNIST_DET.{key}", str(value))]
    root = ensure_fmnist_det(load_config(TINY["resnet18"], opts))  # no LOWSSL.FMNIST_DET.ROOT: the default
    assert root.parent == tmp_path / "data" / "fmnist_det"
    assert annotation_file(root, "val").is_file() and any(image_root(root, "train").iterdir())


def test_coco_evaluator_scores_ground_truth_as_perfect(dataset_root):
    if compat.has_compiled_ops():
        pytest.skip("a full Detectron2 is installed; this checks the Python COCOeval path")
    name = "lowssl_test_fmnist_det_val"
    register(name, annotation_file(dataset_root, "val"), image_root(dataset_root, "val"))
    evaluator = COCOEvaluator(name, output_dir=None, use_fast_impl=False)
    evaluator.reset()
    for record in DatasetCatalog.get(name):
        annotations = record["annotations"]
        instances = Instances((record["height"], record["width"]))
        boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in annotations]
        instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
        instances.scores = torch.ones(len(annotations))
        instances.pred_classes = torch.tensor([a["category_id"] for a in annotations])
        instances.pred_masks = torch.from_numpy(
            np.stack([mask_util.decode(a["segmentation"]) for a in annotations])
        ).bool()
        evaluator.process([{"image_id": record["image_id"]}], [{"instances": instances}])
    results = evaluator.evaluate()
    assert results["bbox"]["AP"] == pytest.approx(100.0) and results["segm"]["AP"] == pytest.approx(100.0)


def _malformed(annotations: dict, case: str) -> str:
    """Break one thing of a COCO dict; the id the error must name."""
    annotation = annotations["annotations"][1]
    if case == "missing image file":
        annotations["images"][2]["file_name"] = "nowhere.png"
        return f"image id {annotations['images'][2]['id']}"
    if case == "bbox outside image":
        annotation["bbox"][0] = 90.0
    elif case == "empty segmentation":
        annotation["segmentation"] = []
    elif case == "unknown category":
        annotation["category_id"] = 42
    return f"annotation id {annotation['id']}"


@pytest.mark.parametrize(
    "case", ["missing image file", "bbox outside image", "empty segmentation", "unknown category"]
)
def test_malformed_annotations_name_the_offending_id(dataset_root, tmp_path, case):
    data = json.loads(annotation_file(dataset_root, "val").read_text())
    offending = _malformed(data, case)
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=f"{offending}\\b"):
        validate_coco_json(broken, image_root(dataset_root, "val"))


def test_train_refuses_a_malformed_dataset_before_training(dataset_root, tmp_path, capsys):
    root = tmp_path / "copy"
    generate(root, DATASET_SPEC)
    data = json.loads(annotation_file(root, "train").read_text())
    offending = _malformed(data, "unknown category")
    annotation_file(root, "train").write_text(json.dumps(data))
    code = main(
        [
            "train",
            "--config",
            str(TINY["resnet18"]),
            "--weights",
            "none",
            "--output-dir",
            str(tmp_path / "out"),
            "--records-dir",
            str(tmp_path / "records"),
            *dataset_opts(root),
        ]
    )
    assert code == 2
    assert offending in capsys.readouterr().err
    assert not (tmp_path / "records").exists()


@pytest.mark.slow
def test_train_command_writes_records(dataset_root, tmp_path):
    torch.manual_seed(3)
    code, payload = _converted(tmp_path, _lowssl_resnet18())
    assert code == 0
    code = main(
        [
            "train",
            "--config",
            str(TINY["resnet18"]),
            "--weights",
            str(tmp_path / "out.pkl"),
            "--output-dir",
            str(tmp_path / "run"),
            "--records-dir",
            str(tmp_path / "records"),
            *dataset_opts(dataset_root),
            *SMALL_SAMPLING,
            "SOLVER.MAX_ITER",
            "1",
            "SOLVER.IMS_PER_BATCH",
            "2",
        ]
    )
    assert code == 0
    rows = read_records(tmp_path / "records")
    assert sorted(rows.metric) == sorted(
        f"coco_tiny_{m}" for m in ("APbb", "APbb50", "APbb75", "APmk", "APmk50", "APmk75")
    )
    row = rows.iloc[0]
    assert (row.stage, row.method, row.recipe, row.backbone) == ("detection", "dino", "ours", "resnet18")
    # The overridden schedule is another protocol, named after the values it changes.
    assert row.protocol.startswith("mask_rcnn_resnet18_fpn_tiny+") and "+SOLVER.MAX_ITER=1" in row.protocol
    assert "LOWSSL.FMNIST_DET.ROOT" not in row.protocol and json.loads(row.details)["paper_protocol"] is False
    assert row.checkpoint_sha256 == payload["lowssl"]["source_sha256"]
    assert json.loads(row.details)["weights_sha256"]
