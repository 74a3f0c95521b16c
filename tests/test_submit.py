"""The submitit launcher: the stage command each task runs, requeue, and a job run through submitit."""

from __future__ import annotations

import pytest

submitit = pytest.importorskip("submitit")

from lowssl.submit import StageJob, executor, main, parser  # noqa: E402

DETECTION = ["train", "--config", "c.yaml", "--weights", "w.pkl", "SOLVER.MAX_ITER", "10"]


def test_pretrain_tasks_run_the_command_as_given():
    job = StageJob("pretrain", ["--config", "x.yaml", "epochs=1"], gpus_per_node=8)
    assert job.command({"SLURM_NNODES": "2"}) == ["--config", "x.yaml", "epochs=1"]


def test_detection_gets_its_machine_layout_from_slurm_and_resumes():
    one_node = StageJob("detection", DETECTION, gpus_per_node=8).command(
        {"SLURM_NNODES": "1", "SLURM_NODEID": "0"}
    )
    assert one_node[:8] == [
        "train",
        "--num-gpus",
        "8",
        "--num-machines",
        "1",
        "--machine-rank",
        "0",
        "--resume",
    ]
    assert one_node[8:] == DETECTION[1:], "Detectron2's KEY VALUE opts stay last"
    two_nodes = StageJob("detection", DETECTION, gpus_per_node=4).command(
        {"SLURM_NNODES": "2", "SLURM_NODEID": "1", "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_JOB_ID": "99"}
    )
    assert two_nodes[two_nodes.index("--machine-rank") + 1] == "1"
    assert two_nodes[two_nodes.index("--dist-url") + 1] == "tcp://gpu07:15099"


def test_flags_the_user_gave_are_kept():
    job = StageJob(
        "detection", [*DETECTION[:1], "--num-gpus", "2", "--resume", *DETECTION[1:]], gpus_per_node=8
    )
    command = job.command({})
    assert command.count("--num-gpus") == 1 and command[command.index("--num-gpus") + 1] == "2"
    assert command.count("--resume") == 1


def test_preemption_resubmits_the_same_job():
    job = StageJob("pretrain", ["--config", "x.yaml"], gpus_per_node=8)
    resubmission = job.checkpoint()
    assert isinstance(resubmission, submitit.helpers.DelayedSubmission)
    assert resubmission.function == job


def test_a_failing_stage_fails_the_job():
    assert StageJob("evaluate", ["--help"])() == 0
    with pytest.raises(SystemExit) as stop:
        StageJob("evaluate", ["no-such-command"])()
    assert stop.value.code == 2


def test_a_job_runs_through_submitit(tmp_path, capsys):
    args = parser().parse_args(["--cluster", "debug", "--job-dir", str(tmp_path), "evaluate", "--help"])
    submitted = executor(args).submit(StageJob(args.stage, args.stage_args))
    assert submitted.result() == 0
    assert "python -m evaluate" in capsys.readouterr().out, "the stage's own --help ran inside the job"


def test_submit_prints_the_job(tmp_path, capsys):
    assert main(["--cluster", "debug", "--job-dir", str(tmp_path), "evaluate", "--help"]) == 0
    assert "submitted evaluate as job" in capsys.readouterr().out
