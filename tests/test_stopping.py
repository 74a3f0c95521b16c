"""A scheduler's stop signal (lowssl.stopping) and one live run per folder (lowssl.run_lock), with real
processes: SIGTERM sent to ``python -m lowssl.pretrain`` / ``python -m lowssl.semisup``, two runs on one folder, the
lock of a killed run."""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_pretrain_engine import REPO, _final_params, _logged_steps, tiny_config
from test_reliability import ENV, _free_port, _pretrain_command, _process_tree
from test_semisup import smoke

from lowssl.checkpoints import schema
from lowssl.distributed import Context
from lowssl.evaluate.linear import train_linear
from lowssl.evaluate.protocols import load_protocol
from lowssl.io import load_checkpoint
from lowssl.pretrain.train import train
from lowssl.run_lock import LOCK_NAME
from lowssl.semisup.__main__ import main as semisup_main
from lowssl.semisup.train import finetune

DEADLINE_S = 60
STOPPED = re.compile(
    r"SIGTERM received: stopped (.*global step (\d+).*); saved (\S+): resume with the same command"
)


def _start(command: list[str], log: Path) -> subprocess.Popen:
    with open(log, "w") as out:  # a file, not a pipe: a full pipe would stall the run
        return subprocess.Popen(command, cwd=REPO, env=ENV, stdout=out, stderr=subprocess.STDOUT)


def _wait_for(ready, process: subprocess.Popen, log: Path, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not ready():
        if process.poll() is not None:
            pytest.fail(
                f"the run ended (exit {process.returncode}) before {what}:\n{log.read_text()[-3000:]}"
            )
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"no {what} within {DEADLINE_S} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.002)


def _finish(process: subprocess.Popen) -> int:
    try:
        return process.wait(timeout=DEADLINE_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _lock_owner(run_dir: Path) -> str:
    lock = run_dir / LOCK_NAME
    return lock.read_text() if lock.exists() else ""


def _stopped_line(output: str, run_dir: Path) -> int:
    """The global step the one-line stop message names, checked against the last.pth it names."""
    found = STOPPED.findall(output)
    assert len(found) == 1, output[-3000:]
    _, step, saved = found[0]
    assert Path(saved) == run_dir / "last.pth"
    return int(step)


@pytest.mark.usefixtures("one_thread")
def test_sigterm_saves_the_step_and_the_resumed_pretraining_matches_an_uninterrupted_one(tmp_path):
    steps = 10  # 7 in epoch 0, 3 in epoch 1
    train(tiny_config(tmp_path / "a", max_steps=steps))
    stopped, run_dir = tmp_path / "stopped", tmp_path / "stopped/run"
    command = [sys.executable, "-m", "lowssl.pretrain", *_pretrain_command(stopped, max_steps=steps)]
    run_dir.mkdir(parents=True)
    log = stopped / "pretrain.log"
    process = _start([*command, "log_every_steps=1"], log)
    # log.csv's first row: step 1 is done, inside the training loop (the handlers are installed)
    _wait_for((run_dir / "log.csv").exists, process, log, "first step")
    os.kill(process.pid, signal.SIGTERM)
    assert _finish(process) == 128 + signal.SIGTERM, log.read_text()[-3000:]
    # One line: the step it stopped after, the file it saved; last.pth holds that step.
    step = _stopped_line(log.read_text(), run_dir)
    assert 1 <= step < steps
    assert schema.load(run_dir / "last.pth")["global_step"] == step
    assert _logged_steps(run_dir) == list(range(1, step + 1))
    # The same command resumes it to the end, bit for bit an uninterrupted run.
    train(tiny_config(stopped, max_steps=steps))
    a, b = _final_params(tmp_path / "a/run/last.pth"), _final_params(run_dir / "last.pth")
    mismatched = [k for k in a if not torch.equal(a[k], b[k])]
    assert not mismatched, f"stopped at step {step}, the resumed run differs in {mismatched[:5]}"


@pytest.mark.usefixtures("one_thread")
def test_sigterm_saves_the_step_and_the_resumed_finetuning_matches_an_uninterrupted_one(tmp_path):
    # synthetic data: 10pct = 6 labelled images; batch 2 -> 3 steps per epoch, 4 epochs
    common = dict(
        random_init=True,
        arch="resnet18",
        dataset="synthetic",
        subset="10pct",
        overrides=["epochs=4", "batch_size=2"],
        protocol="tiny",
        max_steps=None,
    )
    straight = finetune(smoke(tmp_path / "straight", **common))
    stopped = smoke(tmp_path / "stopped", **common)
    run_dir = Path(stopped.output_dir)
    command = [sys.executable, "-m", "lowssl.semisup", "finetune", "--random-init", "--arch", "resnet18"]
    command += ["--dataset", "synthetic", "--subset", "10pct", "--protocol", "tiny", "--workers", "0"]
    command += ["--device", "cpu", "--output-dir", str(run_dir)]
    command += ["--records-dir", stopped.records_dir, "max_eval_images=16", *common["overrides"]]
    log = tmp_path / "semisup.log"
    process = _start(command, log)
    # last.pth appears at the end of epoch 1, inside the training loop
    _wait_for((run_dir / "last.pth").exists, process, log, "first epoch")
    os.kill(process.pid, signal.SIGTERM)
    assert _finish(process) == 128 + signal.SIGTERM, log.read_text()[-3000:]
    step = _stopped_line(log.read_text(), run_dir)
    assert 3 <= step < 12
    assert load_checkpoint(run_dir / "last.pth")["global_step"] == step
    resumed = finetune(stopped)
    assert resumed["top1"] == straight["top1"]
    a, b = load_checkpoint(tmp_path / "straight/run/last.pth"), load_checkpoint(run_dir / "last.pth")
    assert a["global_step"] == b["global_step"] == 12
    mismatched = [k for k, value in a["model"].items() if not torch.equal(value, b["model"][k])]
    assert not mismatched, f"stopped at step {step}, the resumed run differs in {mismatched[:5]}"


def _rank_pid(launcher: subprocess.Popen, rank: int) -> int:
    """The pid of torchrun's worker of ``rank``, found by its environment."""
    for pid in _process_tree(launcher.pid)[1:]:
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:  # ended meanwhile
            continue
        if f"RANK={rank}".encode() in environ:
            return pid
    pytest.fail(f"torchrun has no worker of rank {rank}")


def test_sigterm_to_one_ddp_rank_stops_every_rank_at_the_same_step(tmp_path):
    # 2 gloo processes; only rank 1 is signalled (rank 0 learns it through the all-reduce).
    run_dir = tmp_path / "run"
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={_free_port()}",
    ]
    # Far more steps than the stop needs: a quiet machine runs a tiny step in well under a second, and
    # a run that ended before the signal arrived would test nothing.
    command = [
        *launcher,
        "-m",
        "lowssl.pretrain",
        *_pretrain_command(tmp_path, max_steps=100, epochs=20, log_every_steps=1),
    ]
    log = tmp_path / "torchrun.log"
    process = _start(command, log)
    _wait_for((run_dir / "log.csv").exists, process, log, "first step")
    os.kill(_rank_pid(process, 1), signal.SIGTERM)
    assert _finish(process) != 0  # torchrun reports its workers' 143 as a failure
    output = log.read_text()
    step = _stopped_line(output, run_dir)
    assert 1 <= step < 100
    assert schema.load(run_dir / "last.pth")["global_step"] == step  # rank 0's save, whole
    # rank 0 printed the line above after its save; both ranks stopped themselves (exit 143; torchrun
    # reports whichever ended first, then ends the other), and no rank failed
    assert re.search(r"rank\s*: ([01]) \(local_rank: \1\)\s*exitcode\s*: 143", output), output[-3000:]
    assert "]: Traceback" not in output, output[-3000:]


def test_a_second_run_on_a_live_runs_folder_exits_2_and_the_first_finishes(tmp_path):
    run_dir = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "lowssl.pretrain",
        *_pretrain_command(tmp_path, max_steps=3, log_every_steps=1),
    ]
    first = _start(command, tmp_path / "first.log")
    _wait_for(lambda: str(first.pid) in _lock_owner(run_dir), first, tmp_path / "first.log", "lock")
    os.kill(first.pid, signal.SIGSTOP)  # the first run holds the folder, paused, while the second starts
    try:
        owner = _lock_owner(run_dir).strip()
        second = subprocess.run(
            command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=DEADLINE_S
        )
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert owner.startswith(f"pid {first.pid} on host {socket.gethostname()} (started ")
    assert second.returncode == 2, second.stderr[-3000:]
    assert second.stderr.strip().splitlines() == [
        f"error: run folder {run_dir} is in use by {owner}: wait for that run to end, or give this one "
        "another output folder"
    ]
    assert _finish(first) == 0, (tmp_path / "first.log").read_text()[-3000:]
    assert _logged_steps(run_dir) == [1, 2, 3]  # the first run's rows, once each
    assert _lock_owner(run_dir) == ""  # a run that ended leaves no owner behind


def _hold_lock(run_dir: Path) -> subprocess.Popen:
    """A process that holds ``run_dir``'s lock (lowssl.run_lock alone: it starts in a blink)."""
    code = (
        "import sys, time\nfrom lowssl.run_lock import run_folder_lock\n"
        "with run_folder_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(60)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(run_dir)], cwd=REPO, env=ENV, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline() == "held\n"
    return holder


def test_the_lock_of_a_killed_run_is_taken_over(tmp_path, capsys):
    run_dir = tmp_path / "run"
    killed = _hold_lock(run_dir)
    owner = _lock_owner(run_dir).strip()
    assert owner.startswith(f"pid {killed.pid} on host {socket.gethostname()} (started ")
    killed.kill()  # SIGKILL: its lock file still names it
    killed.wait()
    train(tiny_config(tmp_path, max_steps=1))
    assert f"{run_dir}: took over the lock of {owner}, which is no longer running" in capsys.readouterr().err
    assert schema.load(run_dir / "last.pth")["global_step"] == 1


def test_semisup_refuses_a_folder_another_process_holds(tmp_path, capsys):
    run_dir = tmp_path / "run"
    holder = _hold_lock(run_dir)
    owner = _lock_owner(run_dir).strip()
    try:
        args = ["finetune", "--random-init", "--arch", "resnet18", "--dataset", "synthetic", "--subset"]
        args += ["10pct", "--protocol", "tiny", "--workers", "0", "--output-dir", str(run_dir)]
        assert semisup_main([*args, "--records-dir", str(tmp_path / "records")]) == 2
    finally:
        holder.kill()
        holder.wait()
    assert owner.startswith(f"pid {holder.pid} on host {socket.gethostname()} (started ")
    assert capsys.readouterr().err.strip() == (
        f"error: run folder {run_dir} is in use by {owner}: wait for that run to end, or give this one "
        "another output folder"
    )
    assert not (run_dir / "last.pth").exists()


def test_sigterm_stops_the_linear_probe_with_nothing_recorded(capsys):
    protocol = load_protocol("fast_tiny", "linear", ["epochs=3"])
    features, labels = torch.randn(32, 8), torch.arange(32) % 4

    def batches(epoch):  # the signal comes in the second step of epoch 2
        for start in range(0, 32, 8):
            if (epoch, start) == (1, 8):
                os.kill(os.getpid(), signal.SIGTERM)
            yield features[start : start + 8], labels[start : start + 8]

    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as stopped:
        train_linear(protocol, batches, 8, 4, features, labels, Context(0, 0, 1, torch.device("cpu")))
    assert stopped.value.code == 128 + signal.SIGTERM
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "SIGTERM received: stopped the linear probe (fast_tiny+epochs=3) at epoch 2 of 3, step 2; it keeps "
        "no checkpoint and recorded nothing: run the same command to start it over"
    )
    assert signal.getsignal(signal.SIGTERM) is handler  # given back
