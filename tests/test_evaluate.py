"""The evaluation stage: protocols, the linear probe, feature and records caches, the CLI (k-NN and
feature extraction themselves: tests/test_knn.py, tests/test_features.py)."""

import argparse
import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import lowssl.evaluate.__main__ as cli
import lowssl.evaluate.features
import lowssl.evaluate.kinds
import lowssl.evaluate.run
from lowssl.backbones import build_backbone
from lowssl.config import ConfigError
from lowssl.evaluate.linear import LinearHead, build_optimizer, epoch_lr
from lowssl.evaluate.protocols import available, load_protocol
from lowssl.evaluate.splits import build_splits
from lowssl.io import atomic_torch_save, sha256_file
from lowssl.records import COLUMNS, read_records

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A lowssl pre-training checkpoint of a ResNet18 (student and teacher differ)."""
    path = tmp_path_factory.mktemp("ckpt") / "last.pth"
    torch.manual_seed(1)
    student, teacher = build_backbone("resnet18").state_dict(), build_backbone("resnet18").state_dict()
    atomic_torch_save(
        {
            "format": "lowssl-pretrain-v1",
            "student_backbone": student,
            "teacher_backbone": teacher,
            "method": "dino",
            "backbone": "resnet18",
            "recipe": "ours",
            "epoch": 3,
            "config": {},
        },
        path,
    )
    return path


def run(tmp_path, *args, records="records"):
    """``python -m lowssl.evaluate`` in this process on the synthetic set (64 train / 32 val images, 4 classes)."""
    common = [
        "--dataset",
        "synthetic",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--output-dir",
        str(tmp_path / "out"),
        "--records-dir",
        str(tmp_path / records),
    ]
    return cli.main([args[0], *common, *args[1:]])


# ---- protocols -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", available("linear"))
def test_every_linear_protocol_loads(name):
    protocol = load_protocol(name, "linear")
    assert protocol.name == name and protocol.epochs > 0 and protocol.source


def test_protocols_carry_their_documented_values():
    sslight = load_protocol("sslight", "linear")
    assert (sslight.batch_size, sslight.base_lr, sslight.epochs, sslight.optimizer) == (
        4096,
        0.05,
        100,
        "lars",
    )
    assert (sslight.schedule, sslight.final_lr, sslight.weight_decay, sslight.init_std) == (
        "cosine",
        1e-6,
        0.0,
        0.01,
    )
    assert sslight.peak_lr() == pytest.approx(0.05 * 4096 / 256) and sslight.crop.image_size == 224
    vit = sslight.for_family("vit")
    # SSLight's ViT probe: 128 per GPU x 8 (dino_vit_linear.yaml), so peak 0.01 x 1024/256 = 0.04
    assert (vit.optimizer, vit.batch_size, vit.peak_lr(), vit.vit.last_blocks) == ("sgd", 1024, 0.04, 4)
    assert load_protocol("sslight_tiny", "linear").for_family("vit").batch_size == 64
    assert sslight.for_family("cnn") is sslight
    moco = load_protocol("moco", "linear")
    assert (moco.base_lr, moco.peak_lr(), moco.milestones, moco.epochs, moco.batch_size) == (
        30.0,
        30.0,
        (60, 80),
        100,
        256,
    )
    simreg = load_protocol("simreg", "linear")
    assert (simreg.base_lr, simreg.weight_decay, simreg.epochs) == (0.01, 1e-4, 40)
    assert simreg.feature_normalisation == "l2_standardise"
    fast = load_protocol("fast", "linear")
    assert not fast.paper_protocol and "not a paper protocol" in fast.note and fast.train_input == "features"
    knn = load_protocol("knn", "knn")
    assert (knn.k, knn.temperature) == (20, 0.07)


def test_tiny_preset_keeps_the_kind_and_scales_lr_batch_and_epochs():
    """sslight_tiny stays LARS on a Linear without BN, cosine, with the linear scaling rule; its batch,
    base LR and epochs give LARS a step budget (sum of lr x trust) like the paper's (its YAML says why)."""
    tiny, paper = load_protocol("sslight_tiny", "linear"), load_protocol("sslight", "linear")
    assert (tiny.batch_size, tiny.crop.image_size, tiny.epochs, tiny.train_input) == (64, 32, 200, "features")
    assert tiny.budget_images == 60_000  # the epochs are a step budget: counted over all training images
    assert tiny.peak_lr() == pytest.approx(0.25) and tiny.optimizer == "lars" and not tiny.paper_protocol
    assert (tiny.schedule, tiny.feature_normalisation, tiny.lr_batch_scaling) == ("cosine", "none", True)
    steps = 60_000 // tiny.batch_size + 1  # all Fashion-MNIST training images
    tiny_budget = 0.5 * tiny.peak_lr() * tiny.epochs * steps * 0.001
    paper_budget = 0.5 * paper.peak_lr() * paper.epochs * (1_281_167 // paper.batch_size + 1) * 0.001
    assert paper_budget / 2 < tiny_budget < paper_budget * 2


def test_step_budget_keeps_its_steps_on_a_subset_and_the_protocol_on_its_own_size():
    """budget_images: on fewer images the epochs rise to keep the steps of the named epochs over
    budget_images (milestones at the same fractions); on budget_images images, the protocol as written."""
    tiny = load_protocol("sslight_tiny", "linear")
    assert tiny.budget_images == 60_000 and tiny.steps_per_epoch(60_000) == 938
    assert tiny.for_training_set(60_000) is tiny and tiny.for_training_set(60_000, world_size=2) is tiny
    assert tiny.for_training_set(120_000) is tiny  # more images: more steps, never fewer epochs
    subset = tiny.for_training_set(5_000)  # 79 steps an epoch
    assert (
        subset.epochs == 2375 and 200 * 938 <= subset.epochs * subset.steps_per_epoch(5_000) < 200 * 938 + 79
    )
    moco = load_protocol("moco_tiny", "linear").for_training_set(5_000)  # steps at 60 and 80 of 100 epochs
    assert (moco.epochs, moco.milestones) == (1175, (705, 940))
    for name in ("sslight", "moco", "simreg", "fast_tiny", "simreg_tiny"):  # epochs (full batch: steps)
        paper = load_protocol(name, "linear")
        assert paper.budget_images is None and paper.for_training_set(5_000) is paper
    # where the budget was measured converged (the YAMLs): sslight_tiny on 60,000 images only
    assert [tiny.measured_converged(n) for n in (5_000, 60_000)] == [False, True]
    assert load_protocol("moco_tiny", "linear").measured_converged(5_000) is True
    assert load_protocol("sslight", "linear").measured_converged(5_000) is None  # no such claim
    with pytest.raises(ConfigError, match=r"config key 'budget_images'.*needs a batch size"):
        load_protocol("fast_tiny", "linear", ["budget_images=60000"])


def test_unknown_protocol_lists_the_allowed_names():
    with pytest.raises(
        ConfigError, match=r"unknown linear protocol 'sslite'.*Did you mean 'sslight'.*fast, fast_tiny"
    ):
        load_protocol("sslite", "linear")
    with pytest.raises(ConfigError, match=r"unknown knn protocol 'sslight'"):
        load_protocol("sslight", "knn")


def test_misspelt_override_suggests_the_key():
    with pytest.raises(ConfigError, match=r"unknown config key 'epoch'.*Did you mean 'epochs'"):
        load_protocol("sslight", "linear", ["epoch=3"])
    assert load_protocol("sslight", "linear", ["epochs=3", "crop.image_size=32"]).crop.image_size == 32


def test_lr_schedules_change_per_epoch():
    moco = load_protocol("moco", "linear")
    assert [epoch_lr(moco, e) for e in (0, 59, 60, 79, 80, 99)] == pytest.approx([30, 30, 3, 3, 0.3, 0.3])
    sslight = load_protocol("sslight", "linear", ["epochs=4"])
    lrs = [epoch_lr(sslight, e) for e in range(4)]
    assert lrs[0] == pytest.approx(sslight.peak_lr()) and lrs[2] == pytest.approx(
        (sslight.peak_lr() + 1e-6) / 2
    )


def test_lars_adapts_the_weight_and_not_the_bias():
    """SSLight's LARS (utils/optimizer.py) with weight decay 0: q = 0.001 |w| / |g| on the weight only."""
    torch.manual_seed(0)
    head = LinearHead(4, 3, init_std=0.01)
    head.linear.bias.data.fill_(0.5)
    optimizer = build_optimizer(load_protocol("sslight", "linear", ["batch_size=256"]), head)
    weight, bias = head.linear.weight.detach().clone(), head.linear.bias.detach().clone()
    head.linear.weight.grad, head.linear.bias.grad = torch.randn(3, 4), torch.randn(3)
    optimizer.step()
    trust = 0.001 * weight.norm() / head.linear.weight.grad.norm()
    assert torch.allclose(head.linear.weight, weight - 0.05 * trust * head.linear.weight.grad, atol=1e-7)
    assert torch.allclose(head.linear.bias, bias - 0.05 * head.linear.bias.grad)


# ---- features ------------------------------------------------------------------------------------------


def test_held_out_split_and_subsets_define_the_evaluation_set():
    args = argparse.Namespace(
        dataset="synthetic",
        data_root=None,
        held_out=True,
        held_out_per_class=4,
        train_subset=20,
        eval_subset=None,
    )
    train, evaluation, label = build_splits(args, 32)
    assert (len(train), len(evaluation), label) == (20, 16, "synthetic/held-out-4pc/train20")
    assert evaluation.split == "train" and not set(train.indices) & set(evaluation.indices)
    assert torch.bincount(evaluation.labels).tolist() == [4, 4, 4, 4]


# ---- end to end ----------------------------------------------------------------------------------------


def test_fast_protocol_end_to_end_writes_records(tmp_path, checkpoint, capsys):
    assert (
        run(tmp_path, "linear", "--checkpoint", str(checkpoint), "--protocol", "fast_tiny", "epochs=30") == 0
    )
    assert "[not a paper protocol]" in capsys.readouterr().out
    records = read_records(tmp_path / "records")
    sha = sha256_file(checkpoint)
    assert list(records.columns) == COLUMNS and sorted(records.metric) == ["linear_top1", "linear_top5"]
    row = records.iloc[0]
    assert row.run_id == f"eval-{sha[:12]}-resnet18-student" and row.checkpoint_sha256 == sha
    assert (row.stage, row.method, row.recipe, row.backbone, row.pretrain_epochs) == (
        "linear",
        "dino",
        "ours",
        "resnet18",
        3,
    )
    # epochs=30 changes fast_tiny's epochs: another protocol, named after the change
    assert (row.dataset, row.protocol, row.branch) == ("synthetic", "fast_tiny+epochs=30", "student")
    assert '"paper_protocol": false' in row.details and "not a paper protocol" in row.details
    assert '"best_epoch_selection": false' in row.details and "architecture resnet18" in row.details
    assert 0 <= row.value <= 100 and len(glob.glob(str(tmp_path / "out/feature-cache/*.pt"))) == 2


def test_feature_cache_is_hit_and_no_cache_recomputes(tmp_path, checkpoint, monkeypatch):
    assert (
        run(tmp_path, "linear", "--checkpoint", str(checkpoint), "--protocol", "fast_tiny", "epochs=5") == 0
    )
    calls = []
    monkeypatch.setattr(
        lowssl.evaluate.features, "extract_features", lambda *a, **k: calls.append(1) or 1 / 0
    )
    # another records folder: the stored result is not found, the cached features are
    assert (
        run(
            tmp_path,
            "linear",
            "--checkpoint",
            str(checkpoint),
            "--protocol",
            "fast_tiny",
            "epochs=5",
            records="records2",
        )
        == 0
    )
    assert calls == []
    with pytest.raises(ZeroDivisionError):
        run(
            tmp_path,
            "linear",
            "--checkpoint",
            str(checkpoint),
            "--protocol",
            "fast_tiny",
            "epochs=5",
            "--no-cache",
        )
    assert calls == [1]


def test_stored_result_is_printed_instead_of_recomputed(tmp_path, checkpoint, monkeypatch, capsys):
    args = ("knn", "--checkpoint", str(checkpoint), "--protocol", "knn_tiny", "--branch", "teacher")
    assert run(tmp_path, *args) == 0
    first = read_records(tmp_path / "records")
    assert sorted(first.metric) == ["knn1_top1", "knn_top1"] and set(first.branch) == {"teacher"}
    capsys.readouterr()
    monkeypatch.setattr(lowssl.evaluate.kinds, "knn_evaluate", lambda *a, **k: 1 / 0)
    assert run(tmp_path, *args) == 0
    assert "stored" in capsys.readouterr().out
    with pytest.raises(ZeroDivisionError):
        run(tmp_path, *args, "--no-cache")
    monkeypatch.undo()
    assert run(tmp_path, *args, "--k", "5") == 0  # another k is another evaluation: computed, not read back
    rows = read_records(tmp_path / "records")
    # k=5 is another protocol: its rows sit beside k=20's, under the derived name
    assert len(rows) == 4 and sorted(set(rows.protocol)) == ["knn_tiny", "knn_tiny+k=5"]
    assert rows[rows.protocol == "knn_tiny+k=5"].config_hash.iloc[0] not in set(first.config_hash)


def _separable_image_folder(root: Path) -> None:
    """train/ (10 a class) and val/ (5 a class): 16-px PNGs bright in channel k for class k, so a
    nearest neighbour or a linear layer on raw pixels gets every one right. Every class has the same
    file names (0.png, 1.png, ...): a swap of two class folders keeps every relative path."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 10), ("val", 5)):
        for k, name in enumerate("abc"):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 40, (16, 16, 3), dtype=np.uint8)
                pixels[..., k] += 200
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")


def test_swapped_class_folders_are_recomputed_not_stored(tmp_path, capsys):
    """Before: with val/a and val/b swapped, knn printed its stored 100.00 and a new linear run recorded
    100.00 from the cached val features (true: 33.33, only class c right). Now the datasets'
    fingerprints key both the stored results and the feature cache: the swap is recomputed, and said."""
    data = tmp_path / "data"
    _separable_image_folder(data)

    def evaluate(stage: str, *protocol: str) -> str:
        argv = [stage, "--raw-pixels", "--protocol", *protocol, "--dataset", "imagefolder"]
        argv += ["--data-root", str(data), "--workers", "0", "--device", "cpu"]
        argv += ["--output-dir", str(tmp_path / "out"), "--records-dir", str(tmp_path / "records")]
        assert cli.main(argv) == 0
        return capsys.readouterr().out

    linear = ("linear", "fast_tiny", "epochs=30")
    assert "knn_top1 100.00" in evaluate("knn", "knn_tiny")
    assert "linear_top1 100.00" in evaluate(*linear)
    for unchanged in (("knn", "knn_tiny"), linear):  # the same data again: read back, not recomputed
        out = evaluate(*unchanged)
        assert "top1 100.00" in out and "(stored" in out
    val = data / "val"
    (val / "a").rename(val / "swap")
    (val / "b").rename(val / "a")
    (val / "swap").rename(val / "b")
    out = evaluate(*linear)  # first: the k-NN run below must not have refreshed the cached val features
    assert "computed on other images or labels" in out and "recomputing" in out and "(stored" not in out
    assert "linear_top1 33.33" in out
    out = evaluate("knn", "knn_tiny")
    assert "knn_top1 33.33, knn1_top1 33.33" in out and "(stored" not in out
    assert "knn_top1 33.33" in evaluate("knn", "knn_tiny")  # the new result is the stored one now
    details = read_records(tmp_path / "records").details
    fingerprints = {json.dumps(json.loads(d)["dataset_fingerprint"], sort_keys=True) for d in details}
    assert len(fingerprints) == 1  # knn and linear rows alike: the swapped data's


def test_sslight_tiny_runs_end_to_end_with_best_epoch_selection(tmp_path, checkpoint):
    # budget_images=null: 2 epochs of the 64 synthetic images, not the steps of 2 epochs of 60,000
    args = ["--checkpoint", str(checkpoint), "--protocol", "sslight_tiny", "epochs=2", "batch_size=32"]
    assert run(tmp_path, "linear", *args, "budget_images=null") == 0
    rows = read_records(tmp_path / "records")
    row = rows[rows.metric == "linear_top1"].iloc[0]
    assert (
        row.protocol == "sslight_tiny+batch_size=32+budget_images=null+epochs=2"
        and '"best_epoch_selection": true' in row.details
    )
    assert '"optimizer": "lars"' in row.details and '"train_input": "features"' in row.details
    head = torch.load(
        next(
            (tmp_path / "out").glob(
                "eval-*/linear-sslight_tiny+batch_size=32+budget_images=null+epochs=2-synthetic-head.pth"
            )
        )
    )
    assert head["linear.weight"].shape == (4, 512)
    # moco_tiny: SGD on cached features at the LR chosen on held-out images (its YAML), MoCo's steps
    args = [*args[:3], "moco_tiny", "epochs=2", "milestones=[1]", "budget_images=null"]
    assert run(tmp_path, "linear", *args, "batch_size=32") == 0
    rows = read_records(tmp_path / "records")
    details = rows[rows.protocol.str.startswith("moco_tiny")].details.iloc[0]
    assert '"train_input": "features"' in details and '"base_lr": 0.03' in details
    # the augmented path of the paper's protocols still runs through the frozen backbone
    args = [*args, "train_input=augmented"]
    assert run(tmp_path, "linear", *args, "batch_size=32") == 0
    rows = read_records(tmp_path / "records")
    augmented = rows[rows.protocol.str.contains("train_input")].details.iloc[0]
    assert '"train_input": "augmented"' in augmented


def test_step_budget_runs_its_steps_and_records_them(tmp_path, capsys):
    """A step budget of 2 epochs over 256 images at batch 32 (16 steps) runs 8 epochs on the 64
    training images, and the record says so (on budget_images images the protocol is the one written:
    test_step_budget_keeps_its_steps_on_a_subset_and_the_protocol_on_its_own_size); fewer images than
    the budget was measured converged on print a warning, and the record says so too."""
    args = ["--random-init", "--arch", "resnet18", "--protocol", "sslight_tiny", "epochs=2", "batch_size=32"]
    assert run(tmp_path, "linear", *args, "budget_images=256") == 0
    out, info = capsys.readouterr()  # info lines go to stderr (lowssl.progress.say)
    assert "8 epochs on 64 training images, the optimiser steps of its 2 epochs on 256" in info
    assert "warning: protocol sslight_tiny+batch_size=32+budget_images=256+epochs=2 was measured" in out
    assert "converged on 60000 training images or more, not on 64" in out
    details = json.loads(read_records(tmp_path / "records").details.iloc[0])
    assert (details["protocol"]["epochs"], details["named_epochs"], details["optimizer_steps"]) == (8, 2, 16)
    assert (details["protocol"]["budget_images"], details["train_images"]) == (256, 64)
    assert details["converged_measured"] is False


def test_random_init_baseline(tmp_path):
    assert (
        run(tmp_path, "knn", "--random-init", "--arch", "resnet18", "--protocol", "knn_tiny", "--seed", "3")
        == 0
    )
    row = read_records(tmp_path / "records").iloc[0]
    assert (row.run_id, row.method, row.pretrain_epochs) == (
        "eval-random-init-seed3-resnet18-none",
        "random-init",
        0,
    )
    assert row.checkpoint_sha256 == "random-init-seed3"
    # Another architecture at the same seed is a different evaluation, not a records-cache hit.
    assert (
        run(
            tmp_path,
            "knn",
            "--random-init",
            "--arch",
            "mobilenet_v2",
            "--protocol",
            "knn_tiny",
            "--seed",
            "3",
        )
        == 0
    )
    rows = read_records(tmp_path / "records")
    assert sorted(set(rows.backbone)) == ["mobilenet_v2", "resnet18"]


def test_raw_pixels_floor_is_the_flattened_crops(tmp_path, monkeypatch):
    seen = {}
    knn = lowssl.evaluate.kinds.knn_evaluate

    def spy(bank, *args, **kwargs):
        seen["bank"] = bank
        return knn(bank, *args, **kwargs)

    monkeypatch.setattr(lowssl.evaluate.kinds, "knn_evaluate", spy)
    assert run(tmp_path, "knn", "--raw-pixels", "--protocol", "knn_tiny") == 0
    assert seen["bank"].shape == (64, 3 * 32 * 32)  # knn_tiny's 32-px crops of the 64 training images
    row = read_records(tmp_path / "records").iloc[0]
    assert (row.run_id, row.method, row.backbone, row.checkpoint_sha256) == (
        "eval-raw-pixels-pixels-none",
        "raw-pixels",
        "pixels",
        "raw-pixels",
    )
    assert run(tmp_path, "linear", "--raw-pixels", "--protocol", "fast_tiny", "epochs=2") == 0


def test_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys):
    assert (
        run(tmp_path, "linear", "--checkpoint", str(tmp_path / "missing.pth"), "--protocol", "fast_tiny") == 2
    )
    assert run(tmp_path, "linear", "--random-init", "--protocol", "fast_tiny") == 2
    assert run(tmp_path, "linear", "--random-init", "--arch", "resnet18", "--protocol", "fsat") == 2
    assert run(tmp_path, "knn", "--raw-pixels", "--arch", "resnet18", "--protocol", "knn_tiny") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 4
        and "does not exist" in err[0]
        and "--arch" in err[1]
        and "Did you mean 'fast'" in err[2]
        and "drop --arch" in err[3]
    )
    with pytest.raises(SystemExit) as exit_info:
        run(tmp_path, "linear", "--protocol", "fast_tiny")
    assert exit_info.value.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1


def test_k_larger_than_the_bank_is_refused_not_capped(tmp_path, capsys):
    """Before: --k 100000 on a 500-image bank voted with all 500 and recorded k=100000."""
    code = run(
        tmp_path, "knn", "--random-init", "--arch", "resnet18", "--protocol", "knn_tiny", "--k", "100000"
    )
    assert code == 2 and not (tmp_path / "records").exists() and not (tmp_path / "out").exists()
    assert capsys.readouterr().err == (
        "error: k=100000 neighbours, but the bank holds 64 training images: "
        "pass --k 64 or less (or more training images)\n"
    )
    assert (
        run(tmp_path, "knn", "--random-init", "--arch", "resnet18", "--protocol", "knn_tiny", "--k", "64")
        == 0
    )


@pytest.mark.slow  # starts two Python processes with torch: ~10 s on the shared 2-core machine
def test_two_processes_extract_the_same_features_in_order(tmp_path, checkpoint):
    """63 / 31 images over 2 processes: DistributedSampler pads one image, the gather trims it."""
    common = [
        "linear",
        "--checkpoint",
        str(checkpoint),
        "--dataset",
        "synthetic",
        "--protocol",
        "fast_tiny",
        "--train-subset",
        "63",
        "--eval-subset",
        "31",
        "--workers",
        "0",
        "--device",
        "cpu",
        "epochs=2",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_port=29533",
        "-m",
        "lowssl.evaluate",
        *common,
        "--output-dir",
        str(tmp_path / "ddp"),
        "--records-dir",
        str(tmp_path / "r"),
    ]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (
        cli.main([*common, "--output-dir", str(tmp_path / "one"), "--records-dir", str(tmp_path / "r1")]) == 0
    )
    for split in ("train", "val"):
        ddp, one = (
            torch.load(next((tmp_path / d / "feature-cache").glob(f"*-{split}-*.pt"))) for d in ("ddp", "one")
        )
        assert ddp["key"] == one["key"] and len(ddp["features"]) == (63 if split == "train" else 31)
        assert torch.allclose(ddp["features"], one["features"], atol=1e-5)
    assert len(read_records(tmp_path / "r")) == 2


def test_bn_recalibrated_floor_re_estimates_statistics_and_keeps_weights(tmp_path, monkeypatch):
    from lowssl.evaluate.features import recalibrate_bn

    seen = {}
    original = recalibrate_bn

    def spy(backbone, train, crop, device, **kwargs):
        before = {k: v.clone() for k, v in backbone.state_dict().items()}
        used = original(backbone, train, crop, device, **kwargs)
        after = backbone.state_dict()
        seen["weights_same"] = all(
            torch.equal(before[k], after[k]) for k in before if "running" not in k and "num_batches" not in k
        )
        seen["stats_moved"] = not torch.equal(before["bn1.running_var"], after["bn1.running_var"])
        seen["used"] = used
        return used

    monkeypatch.setattr(lowssl.evaluate.run, "recalibrate_bn", spy)
    args = ("knn", "--random-init", "--arch", "resnet18", "--protocol", "knn_tiny", "--seed", "2")
    assert run(tmp_path, *args, "--recalibrate-bn") == 0 and run(tmp_path, *args) == 0
    assert seen == {"weights_same": True, "stats_moved": True, "used": 64}  # all 64 synthetic training images
    rows = read_records(tmp_path / "records").query("metric == 'knn_top1'").set_index("method")
    assert rows.loc["random-init-bn", "checkpoint_sha256"] == "random-init-seed2-bn2000"
    assert rows.loc["random-init", "checkpoint_sha256"] == "random-init-seed2" and rows.seed.tolist() == [
        2,
        2,
    ]
    assert "BN statistics re-estimated on 64 training images" in rows.loc["random-init-bn", "details"]


def test_recalibrate_bn_is_only_for_random_init(tmp_path, checkpoint, capsys):
    assert (
        run(tmp_path, "knn", "--checkpoint", str(checkpoint), "--protocol", "knn_tiny", "--recalibrate-bn")
        == 2
    )
    assert "--recalibrate-bn is for --random-init" in capsys.readouterr().err
