"""make reproduce-table5: every stage it chains exists, and finished runs are recognised."""

from pathlib import Path

import pytest

from lowssl.io import atomic_torch_save
from results.reproduce import arch_of, scales
from results.stages import finished_run

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
        return atomic_torch_save({"epoch": epoch, "step_in_epoch": step, "config": {"epochs": 2}},
                                 tmp_path / f"{epoch}-{step}.pth")  # fmt: skip

    assert finished_run(checkpoint(2, 0)) is not None
    assert finished_run(checkpoint(1, 0)) is None
    assert finished_run(checkpoint(1, 5)) is None
    assert finished_run(tmp_path / "missing.pth") is None


def test_evaluate_checkpoint_refuses_unknown_stages(capsys):
    from results.evaluate_checkpoint import main

    with pytest.raises(SystemExit) as exit_info:
        main(["some.pth", "--protocols", "linear,segmentation"])
    assert exit_info.value.code == 2
    assert (
        "unknown protocol(s) segmentation; allowed values: linear, knn, semisup, detection"
        in capsys.readouterr().err
    )
