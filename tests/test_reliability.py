"""What survives a real crash: a SIGKILLed pre-training process, a DDP rank that dies mid-run.

The in-process versions (a run stopped at max_steps, a NaN loss, a failed save) are in
test_pretrain_engine.py; here the failures come from outside the process, as they do in practice.
"""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_pretrain_engine import REPO, TINY, _final_params, tiny_config, tiny_overrides

from lowssl.checkpoints import schema
from lowssl.pretrain.train import train

# One thread in the subprocesses, and in this process for the runs compared with them (the one_thread
# fixture): the same kernels on the same thread count, and no OpenMP spinning on a shared machine.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
FAILING_RANK_SCRIPT = REPO / "tests/fixtures/failing_rank_pretrain.py"
HANG_TIMEOUT_S = 120


def _pretrain_command(tmp_path: Path, **extra) -> list[str]:
    return ["--config", str(TINY["dino"]), *tiny_overrides(tmp_path, **extra)]


def _kill_while_a_checkpoint_is_written(tmp_path: Path, max_steps: int, deadline_s: float = 60) -> bool:
    """Start ``python -m lowssl.pretrain`` (a checkpoint every step) and SIGKILL it once its first
    ``last.pth`` exists and the next one is being written. True if the kill landed mid-write."""
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "lowssl.pretrain", *_pretrain_command(tmp_path, max_steps=max_steps)]
    log = tmp_path / "pretrain.log"
    run_dir.mkdir(parents=True)
    with open(log, "w") as out:  # a file, not a pipe: a full pipe would stall the run
        process = subprocess.Popen(
            [*command, "checkpoint.every_steps=1"], cwd=REPO, env=ENV, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + deadline_s
        while not ((run_dir / "last.pth").exists() and any(run_dir.glob(".last.pth.*.tmp"))):
            if process.poll() is not None:
                pytest.fail(
                    f"the run ended (exit {process.returncode}) before it could be killed:\n"
                    + log.read_text()[-3000:]
                )
            if time.monotonic() > deadline:
                pytest.fail(f"no checkpoint write (run/.last.pth.*.tmp) was seen within {deadline_s:.0f} s")
            time.sleep(0.002)
        os.kill(process.pid, signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return any(run_dir.glob(".last.pth.*.tmp"))  # a kill between writes leaves no temp file


@pytest.mark.usefixtures("one_thread")
def test_kill_9_mid_write_then_resume_matches_an_uninterrupted_run(tmp_path):
    # 10 steps: 7 in epoch 0, 3 in epoch 1, so the resumed run crosses an epoch boundary.
    steps = 10
    train(tiny_config(tmp_path / "a", max_steps=steps))
    # A kill from outside while the process writes a checkpoint: the write and its fsync (135 MB) take
    # about half of each step, so a kill that lands between writes is rare; it is retried, never passed.
    for attempt in range(3):
        killed = tmp_path / f"killed{attempt}"
        if _kill_while_a_checkpoint_is_written(killed, steps):
            break
    else:
        pytest.fail("three kills all landed between checkpoint writes")
    # Never half a file: what is left is the previous complete checkpoint, weights-only.
    state = torch.load(killed / "run/last.pth", map_location="cpu", weights_only=True)
    assert 1 <= state["global_step"] < steps
    # Resumed automatically from last.pth up to the same step; the partial temp file is removed.
    train(tiny_config(killed, max_steps=steps))
    assert schema.load(killed / "run/last.pth")["global_step"] == steps
    assert not list((killed / "run").glob(".*.tmp"))
    a, b = _final_params(tmp_path / "a/run/last.pth"), _final_params(killed / "run/last.pth")
    assert a.keys() == b.keys()
    mismatched = [k for k in a if not torch.equal(a[k], b[k])]
    assert not mismatched, f"killed at step {state['global_step']}, resumed run differs in {mismatched[:5]}"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (Linux /proc): torchrun starts each worker in its own session, so
    killing the launcher's process group would leave them running."""
    tree = [pid]
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        for child in children.read_text().split():
            tree += _process_tree(int(child))
    return tree


def test_a_failing_ddp_rank_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    # Rank 1 raises at its 3rd step; rank 0 has saved step 2 and is blocked in that step's collective.
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    command = [
        *launcher,
        f"--master_port={_free_port()}",
        str(FAILING_RANK_SCRIPT),
        *_pretrain_command(tmp_path, max_steps=6),
        "checkpoint.every_steps=1",
    ]
    log = tmp_path / "torchrun.log"
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=REPO, env=ENV, stdout=out, stderr=subprocess.STDOUT)
        try:
            process.wait(timeout=HANG_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            for pid in _process_tree(process.pid):
                with contextlib.suppress(ProcessLookupError):  # ended meanwhile
                    os.kill(pid, signal.SIGKILL)
            process.wait()
            pytest.fail(
                f"the launcher hung for {HANG_TIMEOUT_S} s after a rank failed:\n{log.read_text()[-3000:]}"
            )
    output = log.read_text()
    assert process.returncode != 0, output[-3000:]
    assert "[rank1]: RuntimeError: injected failure on rank 1 at step 3" in output, output[-3000:]
    state = schema.load(tmp_path / "run/last.pth")
    assert state["global_step"] == 2 and state["step_in_epoch"] == 2
