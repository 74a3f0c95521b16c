"""Semi-supervised fine-tuning: the network from a DINO checkpoint, short CPU runs, records, resume."""

import importlib
import json
import pkgutil

import pandas as pd
import pytest
import torch
from torch import nn

from lowssl.checkpoints import open_checkpoint
from lowssl.data import build_dataset, held_out_split
from lowssl.io import load_checkpoint, sha256_file
from lowssl.pretrain.methods import build_method
from lowssl.pretrain.methods.dino import DinoConfig
from lowssl.records import read_records, recorded_budget, recorded_protocol
from lowssl.semisup.__main__ import main
from lowssl.semisup.model import HeadError, SemiSupervisedNet, build_head, dino_head_layout
from lowssl.semisup.protocols import load_protocol
from lowssl.semisup.subsets import load_subset
from lowssl.semisup.train import FinetuneArgs, ResumeError, evaluation_set, finetune
from lowssl.subject import Subject

HIDDEN = 64


@pytest.fixture(scope="module")
def dino_checkpoint(tmp_path_factory):
    """A lowssl DINO ResNet18 checkpoint whose head has non-trivial weights and BN statistics."""
    torch.manual_seed(0)
    method = build_method("dino", "resnet18", DinoConfig(hidden_dim=HIDDEN, out_dim=32, bottleneck_dim=16))
    with torch.no_grad():
        for module in method.student_head.modules():
            if isinstance(module, nn.BatchNorm1d):
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)
                module.weight.normal_()
    path = tmp_path_factory.mktemp("ckpt") / "tiny_dino.pth"
    torch.save(
        {
            "format": "lowssl-pretrain-v1",
            "student_backbone": method.student_backbone.state_dict(),
            "teacher_backbone": method.teacher_backbone.state_dict(),
            "method_state": method.state_dict(),
            "method": "dino",
            "backbone": "resnet18",
            "recipe": "ours",
            "epoch": 1,
            "config": {
                "backbone": "resnet18",
                "method": {"name": "dino"},
                "epochs": 1,
                "batch_size": 8,
                "data": {"dataset": "fashion-mnist", "subset": 1500},
            },
        },
        path,
    )
    return path


@pytest.fixture(scope="module")
def headless_checkpoint(tmp_path_factory, dino_checkpoint):
    """The same backbone as a plain torchvision state dict: no projection head (most third-party files)."""
    path = tmp_path_factory.mktemp("ckpt") / "backbone_only.pth"
    torch.save(load_checkpoint(dino_checkpoint)["student_backbone"], path)
    return path


def smoke(tmp_path, **changes) -> FinetuneArgs:
    """A few steps at 32 px, batch 8, evaluated on 16 images: seconds on a CPU."""
    options = dict(
        subset="1pct",
        protocol="tiny",
        overrides=["batch_size=8"],
        max_steps=2,
        max_eval_images=16,
        workers=0,
        device="cpu",
        output_dir=str(tmp_path / "run"),
        records_dir=str(tmp_path / "records"),
    )
    return FinetuneArgs(**{**options, **changes})


def test_network_carries_the_dino_heads_first_two_layers_exactly(dino_checkpoint):
    adapted = open_checkpoint(dino_checkpoint)
    nets = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        head, width = build_head(
            "resnet18", "checkpoint", adapted, str(dino_checkpoint), new_head_hidden_dim=2048
        )
        nets.append(SemiSupervisedNet(nn.Identity(), head, width, 10, None, freeze_backbone=False))
    head = nets[0].head
    assert [type(m) for m in head] == [nn.Linear, nn.BatchNorm1d, nn.GELU] * 2
    # the width comes from the checkpoint, not the protocol's 2048
    assert head[0].in_features == 512 and head[3].out_features == HIDDEN
    # mlp.0, mlp.1 (BN), mlp.3, mlp.4 (BN): weights and statistics
    for key, value in head.state_dict().items():
        assert torch.equal(value, adapted.head_state[f"mlp.{key}"]), key
    assert len(head.state_dict()) == 14  # 2 Linear x 2 + 2 BN x 5: nothing of mlp.6 / last_layer
    classifier = nets[0].classifier
    assert (classifier.in_features, classifier.out_features) == (HIDDEN, 10)
    assert not torch.equal(classifier.weight, nets[1].classifier.weight)  # fresh init, not from the file
    assert torch.equal(nets[0].head[0].weight, nets[1].head[0].weight)


def test_heads_of_other_layouts_are_not_taken_for_dino_heads():
    moco = {"mlp.0.weight": torch.zeros(64, 512), "mlp.2.weight": torch.zeros(16, 64)}  # Linear-ReLU-Linear
    swav = {
        "mlp.0.weight": torch.zeros(64, 512),
        "mlp.1.running_mean": torch.zeros(64),
        "mlp.3.weight": torch.zeros(16, 64),
    }
    for head in (moco, swav):
        with pytest.raises(HeadError, match="not a DINO head"):
            dino_head_layout(head)
    vit_dino = {
        "mlp.0.weight": torch.zeros(64, 192),
        "mlp.2.weight": torch.zeros(64, 64),
        "last_layer.weight": torch.zeros(8, 16),
    }
    assert dino_head_layout(vit_dino) == (64, False)  # DINO's ViT head has no BN (docs/recipes.md, "DINO")


def test_two_step_finetune_runs_for_both_subsets(tmp_path, dino_checkpoint):
    for subset, labelled, epochs in (("1pct", 600, 10), ("10pct", 6000, 1)):
        result = finetune(smoke(tmp_path / subset, checkpoint=str(dino_checkpoint), subset=subset))
        assert result["labelled_images"] == labelled and result["epochs"] == epochs
        assert 0 <= result["top1"] <= result["top5"] <= 100
        records = pd.read_csv(next((tmp_path / subset / "records").glob("*.csv")))
        assert set(records.metric) == {f"semi_{subset}_top1", f"semi_{subset}_top5"}
        row = records.iloc[0]
        assert (row.stage, row.protocol, row.method, row.recipe, row.branch) == (
            "semisup",
            "tiny+batch_size=8+max_eval_images=16+max_steps=2",
            "dino",
            "ours",
            "student",
        )
        details = json.loads(row.details)
        assert details["paper_protocol"] is False
        assert details["subset_sha256"] == sha256_file(details["subset_file"])
        assert (details["epochs"], details["head_source"], details["labelled_images"]) == (
            epochs,
            "checkpoint",
            labelled,
        )
        settings = recorded_protocol(row.details)  # what pools it with other records, or refuses to
        assert (settings["batch_size"], settings["epochs_1pct"], "name" in settings) == (8, 10, False)
        trained = load_checkpoint(tmp_path / subset / "run" / "last.pth")
        assert trained["global_step"] == 2 and trained["step_in_epoch"] == 2
        start = load_checkpoint(dino_checkpoint)["student_backbone"]["conv1.weight"]
        assert not torch.equal(trained["model"]["backbone.conv1.weight"], start)  # full fine-tuning


def test_checkpoint_without_a_head_gets_a_clear_message_and_the_fallbacks_work(
    tmp_path, headless_checkpoint, capsys
):
    args = [
        "finetune",
        "--checkpoint",
        str(headless_checkpoint),
        "--subset",
        "1pct",
        "--protocol",
        "tiny",
        "--output-dir",
        str(tmp_path / "run"),
    ]
    assert main(args) == 2  # bad input (a HeadError), as every stage's
    message = capsys.readouterr().err
    assert "holds no projection head" in message and "--new-head" in message and "linear-frozen" in message
    assert not (tmp_path / "run").exists()  # it fails before any data or file is touched

    new_head = finetune(smoke(tmp_path / "new", checkpoint=str(headless_checkpoint), new_head=True))
    assert new_head["head_source"] == "new"

    frozen = finetune(
        smoke(
            tmp_path / "frozen",
            checkpoint=str(headless_checkpoint),
            protocol="linear-frozen",
            overrides=["batch_size=8", "image_size=32"],
        )
    )
    assert frozen["head_source"] == "none"
    state = load_checkpoint(tmp_path / "frozen" / "run" / "last.pth")["model"]
    original = load_checkpoint(headless_checkpoint)
    for key in ("conv1.weight", "bn1.running_mean", "layer4.1.bn2.running_var"):  # weights and BN statistics
        assert torch.equal(state[f"backbone.{key}"], original[key]), key
    assert state["classifier.weight"].shape == (10, 512)


def test_resume_continues_exactly(tmp_path):
    # synthetic data: 64 training images, 10pct = 6 labelled; batch 4 -> 2 steps per epoch (4 + 2 images)
    common = dict(
        random_init=True,
        arch="resnet18",
        dataset="synthetic",
        subset="10pct",
        overrides=["epochs=2", "batch_size=4"],
        max_eval_images=None,
        protocol="tiny",
    )
    straight = finetune(smoke(tmp_path / "straight", max_steps=None, **common))
    finetune(smoke(tmp_path / "resumed", max_steps=3, **common))  # stops in the middle of epoch 2
    interrupted = load_checkpoint(tmp_path / "resumed" / "run" / "last.pth")
    assert (interrupted["epoch"], interrupted["step_in_epoch"], interrupted["global_step"]) == (1, 1, 3)
    resumed = finetune(smoke(tmp_path / "resumed", max_steps=None, **common))
    assert resumed["top1"] == straight["top1"]
    a = load_checkpoint(tmp_path / "straight" / "run" / "last.pth")
    b = load_checkpoint(tmp_path / "resumed" / "run" / "last.pth")
    assert a["global_step"] == b["global_step"] == 4
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key

    with pytest.raises(ResumeError, match="batch_size"):  # another protocol is another run
        finetune(smoke(tmp_path / "resumed", **{**common, "overrides": ["epochs=2", "batch_size=2"]}))


def test_finetune_takes_key_value_overrides_and_names_the_protocol_after_them(tmp_path, capsys):
    # synthetic data, 10pct = 6 labelled images: epochs=1 of batch 4 is 2 steps
    args = [
        "finetune",
        "--random-init",
        "--arch",
        "resnet18",
        "--dataset",
        "synthetic",
        "--subset",
        "10pct",
        "--protocol",
        "tiny",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--output-dir",
        str(tmp_path / "run"),
        "--records-dir",
        str(tmp_path / "records"),
        "max_eval_images=8",
    ]
    assert main([*args, "epochs=2", "batch_size=4"]) == 0
    row = pd.read_csv(next((tmp_path / "records").glob("*.csv"))).iloc[0]
    assert row.protocol == "tiny+batch_size=4+epochs=2+max_eval_images=8"  # epochs: those of the 10pct run
    assert json.loads(row.details)["epochs"] == 2
    capsys.readouterr()

    assert main([*args, "--resume", "never", "batch_sise=4"]) == 2
    assert "unknown config key 'batch_sise'. Did you mean 'batch_size'?" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # one override syntax: key=value
        main([*args, "--resume", "never", "--epochs", "2"])


def test_finetune_reads_the_checkpoint_once(tmp_path, dino_checkpoint, torch_loads):
    finetune(smoke(tmp_path, checkpoint=str(dino_checkpoint), max_steps=1))
    assert torch_loads.count(str(dino_checkpoint)) == 1  # weights, head and provenance from one read


def test_held_out_evaluation_never_scores_a_labelled_image_and_is_another_run(tmp_path):
    # synthetic data: 64 training images of 4 classes, 10pct = 6 labelled; 8 per class held out
    common = dict(
        random_init=True,
        arch="resnet18",
        dataset="synthetic",
        subset="10pct",
        overrides=["epochs=1", "batch_size=4"],
        max_steps=None,
        max_eval_images=None,
    )
    on_val = finetune(smoke(tmp_path, **common))
    with pytest.raises(ResumeError, match="eval_set"):  # the same output dir, scored elsewhere
        finetune(smoke(tmp_path, held_out=True, held_out_per_class=8, **common))
    held = finetune(smoke(tmp_path, held_out=True, held_out_per_class=8, resume="never", **common))
    subset = load_subset(
        tmp_path / "run" / "subset_synthetic_10pct_seed0.txt", build_dataset("synthetic", "train"), 0.1
    )
    scored = evaluation_set(
        smoke(tmp_path, held_out=True, held_out_per_class=8, **common),
        build_dataset("synthetic", "train"),
        subset,
        load_protocol("tiny"),
    )
    assert not set(scored.indices) & set(subset.indices.tolist())
    assert len(scored) == 32 - len(
        set(held_out_split(scored.base.targets, 8)[1]) & set(subset.indices.tolist())
    )
    assert len(scored) < 32  # this subset meets the held-out images: the overlap was dropped
    assert held["eval_images"] == len(scored)
    assert on_val["eval_images"] == len(build_dataset("synthetic", "val"))
    rows = pd.read_csv(next((tmp_path / "records").glob("*.csv")))
    assert set(rows.dataset) == {"synthetic", "synthetic/held-out-8pc"}
    details = {row.dataset: json.loads(row.details) for row in rows.itertuples()}
    assert details["synthetic/held-out-8pc"]["eval_set"] == "held-out-8pc"
    assert details["synthetic"]["eval_set"] == "val"
    default_dir = FinetuneArgs(**{**common, "held_out": True, "held_out_per_class": 8}).run_name(
        Subject.random_init("resnet18", 0, "random-init:resnet18")
    )
    assert default_dir.endswith("_10pct_held-out-8pc")  # not the val run's folder


def test_records_carry_the_pretraining_budget_of_the_checkpoint(tmp_path, dino_checkpoint):
    """Issue 28: semisup records of a lowssl checkpoint carried no pretrain_budget, so the leaderboard
    could pool fine-tunings of differently pre-trained checkpoints; now they carry the checkpoint's, and a
    random-init run says "none" (nothing pre-trained), as evaluate's records do."""
    finetune(smoke(tmp_path / "ckpt", checkpoint=str(dino_checkpoint), records_dir=str(tmp_path / "records")))
    finetune(
        smoke(tmp_path / "rand", random_init=True, arch="resnet18", records_dir=str(tmp_path / "records"))
    )
    records = read_records(tmp_path / "records")
    budgets = dict(zip(records.method, records.details.map(recorded_budget), strict=False))
    assert budgets == {"dino": "1500 fashion-mnist images x 1 epochs, batch 8", "random-init": "none"}


def test_pretrain_and_semisup_raise_the_one_resume_and_non_finite_errors():
    """Issue 28: ResumeError, NonFiniteLossError and NonFiniteWeightsError were defined twice (pretrain
    and semisup), so catching one stage's missed the other's; now both raise lowssl.stopping's: each
    stage has each of them, and every module of a stage that holds one holds lowssl.stopping's."""
    import lowssl.stopping

    for stage in ("pretrain", "semisup"):
        package = importlib.import_module(f"lowssl.{stage}")
        modules = [
            importlib.import_module(f"lowssl.{stage}.{info.name}")
            for info in pkgutil.iter_modules(package.__path__)
            if info.name != "__main__"
        ]
        for name in ("ResumeError", "NonFiniteLossError", "NonFiniteWeightsError"):
            held = [getattr(module, name) for module in modules if hasattr(module, name)]
            assert held and all(error is getattr(lowssl.stopping, name) for error in held), (stage, name)
