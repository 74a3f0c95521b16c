"""Settings where lowssl used to differ from the authors' code (SSLight) or the methods' reference code,
each read from the model or method as built, not from the YAML."""

from pathlib import Path

import pytest
import torch
from test_pretrain_engine import tiny_config
from timm.layers import DropPath
from torch import nn

from lowssl.backbones import build_backbone
from lowssl.checkpoints import schema
from lowssl.config import ConfigError, load
from lowssl.pretrain.config import PretrainConfig
from lowssl.pretrain.methods import RunLayout, SwAV, SwavConfig
from lowssl.pretrain.train import build_run_method, train

CONFIGS = Path(__file__).resolve().parent.parent / "pretrain" / "configs"
# Heads this small build in milliseconds; neither the stochastic depth nor the queue's rows depend on them.
SMALL_DINO = ["method.out_dim=16", "method.hidden_dim=16", "method.bottleneck_dim=8"]
SMALL_SWAV = ["method.hidden_dim=16", "method.n_prototypes=10"]


def _config(path: Path, *overrides: str) -> PretrainConfig:
    return load(PretrainConfig, path, ["data.root=/imagenet", *overrides])


# ---- ViT DINO student: stochastic depth 0.1, teacher none ----------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "dino_vit_tiny_baseline",
        "dino_vit_tiny_ours",
        "tiny/dino_vit_tiny_baseline",
        "tiny/dino_vit_tiny_ours",
    ],
)
def test_vit_tiny_dino_student_has_the_authors_stochastic_depth_and_the_teacher_none(name):
    method = build_run_method(_config(CONFIGS / f"{name}.yaml", *SMALL_DINO), n_processes=1)
    blocks = method.student_backbone.blocks
    # timm's (and DINO's) rule: block i of d drops with 0.1 * i / (d - 1); at rate 0 it builds nn.Identity.
    for index, block in enumerate(blocks):
        expected = 0.1 * index / (len(blocks) - 1)
        for drop in (block.drop_path1, block.drop_path2):
            if index == 0:
                assert isinstance(drop, nn.Identity)
            else:
                assert isinstance(drop, DropPath) and drop.drop_prob == pytest.approx(expected)
    assert blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)
    teacher = method.teacher_backbone
    assert not any(isinstance(module, DropPath) for module in teacher.modules())
    student_state, teacher_state = method.student_backbone.state_dict(), teacher.state_dict()
    assert student_state.keys() == teacher_state.keys()
    assert all(torch.equal(student_state[key], teacher_state[key]) for key in student_state)

    # In training mode the student drops paths at random, the teacher never.
    method.train()
    torch.manual_seed(0)
    images = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(teacher(images), teacher(images))
        assert not torch.equal(method.student_backbone(images), method.student_backbone(images))


def test_vit_small_dino_shares_the_vit_stochastic_depth():
    method = build_run_method(_config(CONFIGS / "dino_vit_small_ours.yaml", *SMALL_DINO), n_processes=1)
    assert method.student_backbone.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)
    assert not any(isinstance(module, DropPath) for module in method.teacher_backbone.modules())


def test_cnn_configs_keep_no_stochastic_depth_and_refuse_one():
    cfg = _config(CONFIGS / "dino_resnet18_ours.yaml")
    assert cfg.drop_path_rate == 0.0
    with pytest.raises(ConfigError, match=r"'drop_path_rate'.*ViT backbones; resnet18 takes 0"):
        _config(CONFIGS / "dino_resnet18_ours.yaml", "drop_path_rate=0.1")
    with pytest.raises(ValueError, match="resnet18 has no stochastic depth"):
        build_backbone("resnet18", drop_path_rate=0.1)


def test_resume_treats_checkpoints_without_the_key_as_rate_0():
    saved = {"backbone": "vit_tiny_patch16_224", "method": {"name": "dino"}}
    assert schema.model_differences(saved, {**saved, "drop_path_rate": 0.0}) == []
    assert schema.model_differences(saved, {**saved, "drop_path_rate": 0.1}) == ["drop_path_rate: 0.0 -> 0.1"]


# ---- SwAV queue: whole global batches, then split over the processes ----------------------------------


def test_swav_paper_queue_is_shortened_to_whole_global_batches_as_main_swav():
    cfg = _config(CONFIGS / "swav_mobilenet_v2_ours.yaml", *SMALL_SWAV)
    assert (cfg.method.queue_length, cfg.batch_size) == (3840, 1024)  # 8 processes x 128
    method = build_run_method(cfg, n_processes=8)
    # 3840 - 3840 % 1024 = 3072 over all processes: 384 rows in each (lowssl had 3840 // 8 = 480).
    assert method.queue.shape == (2, 384, cfg.method.out_dim)
    assert method.cfg.queue_length == 3072
    assert cfg.method.queue_length == 3840  # the config itself keeps the configured value


@pytest.mark.parametrize(
    ("queue_length", "per_process", "n_processes", "rows"),
    [(3840, 128, 8, 384), (4096, 128, 8, 512), (640, 64, 1, 640), (0, 128, 8, 0)],
)
def test_swav_queue_rows_per_process(queue_length, per_process, n_processes, rows):
    cfg = SwavConfig(hidden_dim=16, out_dim=8, n_prototypes=10, queue_length=queue_length)
    method = SwAV(
        build_backbone("resnet18"), 512, "cnn", cfg, RunLayout(per_process * n_processes, n_processes)
    )
    assert method.queue.shape == (2, rows, 8)
    assert method.cfg.queue_length == rows * n_processes


def test_swav_queue_shorter_than_the_global_batch_is_an_error():
    cfg = SwavConfig(hidden_dim=16, out_dim=8, n_prototypes=10, queue_length=100)
    with pytest.raises(ConfigError, match=r"'method.queue_length': 100 is shorter than the global batch 128"):
        SwAV(build_backbone("resnet18"), 512, "cnn", cfg, RunLayout(128, 1))


def test_swav_checkpoint_records_the_queue_it_trained_with(tmp_path):
    queue = {"method.out_dim": 8, "method.queue_length": 36}
    cfg = tiny_config(tmp_path, "swav", epochs=1, max_steps=1, **queue)
    train(cfg)
    state = schema.load(tmp_path / "run" / "last.pth")
    assert state["config"]["method"]["queue_length"] == 36
    assert state["method_config"]["queue_length"] == 32  # 36 - 36 % 8
    assert state["method_state"]["queue"].shape == (2, 32, 8)
