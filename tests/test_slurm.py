"""SLURM launch: srun's variables become torchrun's, and a 2-process gloo group forms from them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from lowssl.distributed import first_host, torchrun_variables


@pytest.mark.parametrize(
    ("nodelist", "host"),
    [
        ("node017", "node017"),
        ("gpu[003-010,012]", "gpu003"),
        ("gpu[012,003-010]", "gpu012"),
        ("a100-[7-9],cpu1", "a100-7"),
        ("cpu1,gpu[1-2]", "cpu1"),
    ],
)
def test_first_host_of_a_node_list(nodelist, host):
    assert first_host(nodelist) == host


def test_a_malformed_node_list_is_named():
    with pytest.raises(ValueError, match=r"SLURM_JOB_NODELIST='\[1-2\]'"):
        first_host("[1-2]")


SRUN = {
    "SLURM_PROCID": "3",
    "SLURM_LOCALID": "1",
    "SLURM_NTASKS": "8",
    "SLURM_JOB_NODELIST": "gpu[04-05]",
    "SLURM_JOB_ID": "1234567",
}


def test_srun_variables_become_torchruns():
    assert torchrun_variables(SRUN) == {
        "RANK": "3",
        "LOCAL_RANK": "1",
        "WORLD_SIZE": "8",
        "MASTER_ADDR": "gpu04",
        "MASTER_PORT": str(15000 + 4567),
    }


def test_the_users_rendezvous_wins():
    chosen = torchrun_variables({**SRUN, "MASTER_ADDR": "head", "MASTER_PORT": "29400"})
    assert (chosen["MASTER_ADDR"], chosen["MASTER_PORT"]) == ("head", "29400")


@pytest.mark.parametrize(
    "environ",
    [{}, {**SRUN, "WORLD_SIZE": "2", "RANK": "0"}],
    ids=["no launcher", "torchrun inside srun keeps torchrun's ranks"],
)
def test_nothing_to_translate(environ):
    assert torchrun_variables(environ) == {}


GROUP = """
import torch
from lowssl import distributed
ctx = distributed.init("cpu")
gathered = distributed.all_gather_cat(torch.tensor([ctx.rank]))
print(ctx.rank, ctx.local_rank, ctx.world_size, gathered.tolist(), flush=True)
distributed.shutdown()
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_srun_tasks_form_one_gloo_group():
    """Two processes with only SLURM's variables (as srun --ntasks=2 sets them) join one group."""
    port = _free_port()
    base = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    tasks = [
        subprocess.Popen(
            [sys.executable, "-c", GROUP],
            env={
                **base,
                "SLURM_PROCID": str(rank),
                "SLURM_LOCALID": str(rank),
                "SLURM_NTASKS": "2",
                "SLURM_JOB_NODELIST": "localhost",
                "SLURM_JOB_ID": "42",
                "MASTER_PORT": str(port),
                "OMP_NUM_THREADS": "1",
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    outputs = [task.communicate(timeout=120) for task in tasks]
    assert [task.returncode for task in tasks] == [0, 0], [err for _, err in outputs]
    assert sorted(out.strip() for out, _ in outputs) == ["0 0 2 [0, 1]", "1 1 2 [0, 1]"]
