"""make reproduce-table5: every stage it chains exists, and finished runs are recognised."""

from pathlib import Path

import pytest

from lowssl.checkpoints import schema
from lowssl.io import atomic_torch_save
from lowssl.results.reproduce import arch_of, scales
from lowssl.results.stages import finished_run

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("scale", ["tiny", "paper"])
def test_scale_points_at_existing_configs_and_protocols(scale):
    spec = scales("/data/imagenet", 8)[scale]
    for experiment in spec.experiments:
        assert (REPO / spec.config_dir / f"{experiment}.yaml").is_file()
        assert arch_of(experiment) in ("mobilenet_v2", "resnet18", "resnet34")
    assert (REPO / "evaluate" / "configs" / f"{spec.protocol}.yaml").is_file()
    assert {arch_of(e) for e in spec.experiments} == {"mobilenet_v2", "resnet18", "resnet34"}


def test_finished_runs_are_reused_and_others_resumed(tmp_path):
    def checkpoint(epoch, step):
        return atomic_torch_save(
            {"format": schema.FORMAT, "epoch": epoch, "step_in_epoch": step, "config": {"epochs": 2}},
            tmp_path / f"{epoch}-{step}.pth",
        )

    assert finished_run(checkpoint(2, 0)) is not None
    assert finished_run(checkpoint(1, 0)) is None
    assert finished_run(checkpoint(1, 5)) is None
    assert finished_run(tmp_path / "missing.pth") is None


def test_evaluate_checkpoint_refuses_unknown_stages(capsys):
    from lowssl.results.evaluate_checkpoint import main

    with pytest.raises(SystemExit) as exit_info:
        main(["some.pth", "--protocols", "linear,segmentation"])
    assert exit_info.value.code == 2
    assert (
        "unknown protocol(s) segmentation; allowed values: linear, knn, semisup, detection"
        in capsys.readouterr().err
    )


def test_seeds_are_first_class_and_the_table_is_rewritten_after_each(tmp_path, monkeypatch):
    import lowssl.results.reproduce as reproduce

    commands = []
    monkeypatch.setattr(reproduce, "run", lambda command: commands.append(command))
    reproduce.reproduce("tiny", None, 8, tmp_path / "work", tmp_path / "runs", tmp_path, seeds=2)
    pretrain = [c for c in commands if "lowssl.pretrain" in c]
    assert len(pretrain) == 2 * 6  # 2 seeds x 3 backbones x (baseline, ours)
    assert {c[c.index("--config") + 1].rsplit("_", 1)[1] for c in pretrain} == {"baseline.yaml", "ours.yaml"}
    assert sorted({arg for c in pretrain for arg in c if arg.startswith("seed=")}) == ["seed=0", "seed=1"]
    assert all(f"data.subset={reproduce.TINY_IMAGES}" in c for c in pretrain)
    # the budget is in every run folder's name: a finished run of another budget is never reused
    assert all(
        f"-{reproduce.TINY_IMAGES}x1-seed" in next(a for a in c if a.startswith("output_dir="))
        for c in pretrain
    )
    floors = [c for c in commands if "--random-init" in c]
    assert len(floors) == 2 * 3 * 2 and sum("--recalibrate-bn" in c for c in floors) == 6
    tables = [i for i, c in enumerate(commands) if "table5" in c]
    assert len(tables) == 2 and tables[0] < commands.index(
        pretrain[6]
    )  # the first table before seed 1 starts
    budget = commands[tables[1]][commands[tables[1]].index("--budget") + 1]
    assert (
        budget.startswith(f"{reproduce.TINY_IMAGES:,} Fashion-MNIST images x 1 epoch")
        and "seeds 0-1 of 2" in budget
    )


def test_zero_seeds_are_refused(capsys):
    from lowssl.results.reproduce import main

    with pytest.raises(SystemExit):
        main(["table5", "--seeds", "0"])
    assert "--seeds 0: a table needs at least 1 seed" in capsys.readouterr().err


def test_paper_scale_launches_torchrun_on_several_machines():
    from lowssl.results.reproduce import scales

    one = scales("/data/imagenet", gpus=8)["paper"].launcher
    assert one[2:] == ("torch.distributed.run", "--nproc_per_node=8", "-m")
    two = scales("/data/imagenet", gpus=4, nodes=2, rdzv_endpoint="node01:29400")["paper"].launcher
    assert two[3:6] == ("--nnodes=2", "--rdzv-backend=c10d", "--rdzv-endpoint=node01:29400")
    assert "--nproc_per_node=4" in two


def test_several_machines_need_a_rendezvous(capsys):
    from lowssl.results.reproduce import main

    with pytest.raises(SystemExit) as stop:
        main(["table5", "--imagenet", "/data/imagenet", "--nnodes", "2"])
    assert stop.value.code == 2
    assert "--nnodes 2 needs --rdzv-endpoint HOST:PORT" in capsys.readouterr().err
