"""make evaluate-checkpoint: the stages it runs (full size or ``--quick``), and its last step, the
checkpoint's own rows beside the comparable rows of its backbone. The stages are not run: the command
runner is replaced, as in the other results targets' tests."""

import pytest
import torch
import torchvision

import lowssl.results.evaluate_checkpoint as evaluate_checkpoint
from lowssl.paths import HOME_ENV


@pytest.fixture
def resnet18_file(tmp_path):
    """A torchvision ResNet18 at its random initialisation: a checkpoint every stage can read."""
    path = tmp_path / "r18.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return path


def commands_of(monkeypatch, tmp_path, argv):
    """The stage commands ``main(argv)`` runs, by module and sub-command (e.g. ``evaluate linear``)."""
    commands: list[list[str]] = []
    monkeypatch.setattr(evaluate_checkpoint, "run", commands.append)
    monkeypatch.setenv(HOME_ENV, str(tmp_path / "home"))
    assert (
        evaluate_checkpoint.main([*argv, "--format", "torchvision", "--work-dir", str(tmp_path / "w")]) == 0
    )
    return {f"{c[2].removeprefix('lowssl.')} {c[3]}": c for c in commands}


def option(command: list[str], flag: str) -> str | None:
    return command[command.index(flag) + 1] if flag in command else None


def test_full_size_runs_each_stage_at_its_defaults(monkeypatch, tmp_path, resnet18_file):
    commands = commands_of(monkeypatch, tmp_path, [str(resnet18_file)])
    assert list(commands) == [
        "evaluate linear",
        "evaluate knn",
        "semisup finetune",
        "detection convert",
        "detection train",
        "results leaderboard",
    ]
    assert option(commands["evaluate linear"], "--train-subset") == "10000"
    assert option(commands["evaluate linear"], "--eval-subset") is None
    assert option(commands["evaluate knn"], "--train-subset") is None
    assert not [arg for arg in commands["semisup finetune"] if arg.startswith("max_eval_images=")]
    assert "SOLVER.MAX_ITER" not in commands["detection train"]


def test_quick_shrinks_every_stage_and_says_so_in_its_own_flags(monkeypatch, tmp_path, resnet18_file):
    """A first look: smaller sets and fewer iterations, passed as the stages' own flags, which the
    stages record (dataset tagged train1000/eval500, protocol +max_eval_images=..., changed
    Detectron2 keys), so that a quick number never pools with a full one."""
    commands = commands_of(monkeypatch, tmp_path, [str(resnet18_file), "--quick"])
    for stage in ("evaluate linear", "evaluate knn"):
        command = commands[stage]
        assert (option(command, "--train-subset"), option(command, "--eval-subset")) == ("1000", "500")
        assert command.count("--train-subset") == 1
    assert commands["semisup finetune"][-1] == "max_eval_images=1000"  # the run's, not the protocol's
    train = commands["detection train"]
    assert train[train.index("SOLVER.MAX_ITER") + 1] == "50"
    assert train.index("SOLVER.MAX_ITER") > train.index("--output-dir")  # Detectron2's KEY VALUE, last


def test_it_ends_with_the_checkpoints_rows_and_writes_the_whole_leaderboard(
    monkeypatch, tmp_path, resnet18_file
):
    commands = commands_of(monkeypatch, tmp_path, [str(resnet18_file), "--protocols", "knn"])
    assert list(commands) == ["evaluate knn", "results leaderboard"]
    board = commands["results leaderboard"]
    assert option(board, "--checkpoint") == str(resnet18_file)
    assert option(board, "--out") == str(tmp_path / "home" / "results" / "leaderboard.csv")


def test_a_detection_backbone_it_cannot_train_is_one_line(monkeypatch, tmp_path, resnet18_file, capsys):
    monkeypatch.setattr(evaluate_checkpoint, "detection_architectures", lambda: ("resnet50",))
    monkeypatch.setattr(evaluate_checkpoint, "run", lambda command: None)
    argv = [
        str(resnet18_file),
        "--format",
        "torchvision",
        "--protocols",
        "detection",
        "--work-dir",
        str(tmp_path),
    ]
    assert evaluate_checkpoint.main(argv) == 2
    assert capsys.readouterr().err == (
        "error: detection has no registered backbone for 'resnet18' (allowed: resnet50)\n"
    )


def test_each_checkpoint_and_size_has_its_own_run_folders(monkeypatch, tmp_path, resnet18_file):
    """Before: every checkpoint fine-tuned in <work-dir>/semisup, so every one recorded as run
    ``semisup-semisup`` (a second checkpoint's rows replaced the first's) and detection trained in
    one folder. Now each checkpoint, full or quick, has its own."""
    other = tmp_path / "other.pth"
    torch.manual_seed(1)
    torch.save(torchvision.models.resnet18().state_dict(), other)
    folders = set()
    for argv in ([str(resnet18_file)], [str(resnet18_file), "--quick"], [str(other)]):
        commands = commands_of(monkeypatch, tmp_path, [*argv, "--protocols", "semisup,detection"])
        semisup, detection = (
            option(commands["semisup finetune"], "--output-dir"),
            option(commands["detection train"], "--output-dir"),
        )
        folders |= {semisup, detection}
    assert len(folders) == 6
