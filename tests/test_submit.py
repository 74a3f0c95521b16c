"""The submitit launcher: the stage command each task runs, requeue, and a job run through submitit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

submitit = pytest.importorskip("submitit")

from lowssl.submit import StageJob, choose_cluster, executor, main, parser  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
NO_SLURM = "error: no SLURM on this machine (sbatch is not on PATH): submit from a SLURM login node, or pass --local to run the job as one process here (--dry-run shows the job without submitting)"  # noqa: E501

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
    assert "python -m lowssl.evaluate" in capsys.readouterr().out, "the stage's own --help ran inside the job"


def test_submit_prints_the_job(tmp_path, capsys):
    assert main(["--cluster", "debug", "--job-dir", str(tmp_path), "evaluate", "--help"]) == 0
    assert "submitted evaluate as job" in capsys.readouterr().out


@pytest.fixture
def no_slurm(tmp_path, monkeypatch):
    """A PATH without sbatch (the CI machine has none either; this makes it certain)."""
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    return empty


def test_without_slurm_it_refuses_in_one_line(tmp_path, no_slurm):
    """Before: submitit's local executor ran the job on this machine, silently (with --nodes 2: a
    submitit traceback). Now one line naming the fix, exit 2, nothing submitted."""
    jobs = tmp_path / "jobs"
    command = [
        sys.executable,
        "-m",
        "lowssl.submit",
        "--job-dir",
        str(jobs),
        "pretrain",
        "--config",
        "x.yaml",
    ]
    done = subprocess.run(command, cwd=REPO, env=os.environ, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (2, "", NO_SLURM + "\n")
    assert not jobs.exists(), "no job folder: nothing was submitted"


def test_local_is_asked_for_and_is_one_machine(no_slurm, capsys):
    assert choose_cluster(parser().parse_args(["--local", "evaluate", "--help"])) == "local"
    assert main(["--local", "--nodes", "2", "pretrain", "--config", "x.yaml"]) == 2
    assert capsys.readouterr().err == (
        "error: --nodes 2 needs SLURM; a local run is one process on this machine: drop --nodes, or "
        "submit from a SLURM login node\n"
    )


def test_slurm_is_used_where_sbatch_exists(no_slurm):
    sbatch = no_slurm / "sbatch"
    sbatch.write_text("#!/bin/sh\nexit 1\n")
    sbatch.chmod(0o755)
    assert choose_cluster(parser().parse_args(["pretrain", "--config", "x.yaml"])) == "slurm"


def test_dry_run_prints_the_job_and_submits_nothing(tmp_path, no_slurm, capsys):
    jobs = tmp_path / "jobs"
    argv = ["--dry-run", "--nodes", "2", "--gpus-per-node", "4", "--partition", "gpu", "--job-dir", str(jobs)]
    assert main([*argv, "pretrain", "--config", "x.yaml", "epochs=1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "dry run: nothing submitted; cluster slurm (no sbatch on this machine)"
    assert lines[1] == (
        "sbatch parameters (submitit): name=lowssl, nodes=2, tasks_per_node=4, gpus_per_node=4, "
        "cpus_per_task=10, timeout_min=2880, slurm_partition=gpu"
    )
    assert lines[3] == "each of the 8 task(s) runs: python -m lowssl.pretrain --config x.yaml epochs=1"
    assert not jobs.exists()
