"""One process per device, started by torchrun or by SLURM's ``srun`` (or run plainly as one process).

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE. ``srun`` with one task per device sets SLURM_PROCID,
SLURM_LOCALID and SLURM_NTASKS instead: :func:`torchrun_variables` translates them (and picks the
rendezvous host and port from the job), so ``srun python -m lowssl.pretrain ...`` needs no torchrun line.
:func:`init` then joins the process group with NCCL on GPUs and gloo on CPU. Without either set of
variables everything runs in one process and the helpers below are no-ops.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Context:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: ``gpu[003-010,012],cpu1`` -> ``gpu003``.

    Written here because ``scontrol show hostnames`` is not on every container's PATH, and only the
    first host (the rendezvous) is needed, not the whole expansion.
    """
    head = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if head is None or not head.group(1):
        raise ValueError(f"SLURM_JOB_NODELIST={nodelist!r} is not a SLURM node list (e.g. node[01-04])")
    prefix, ranges = head.groups()
    return prefix if ranges is None else prefix + ranges.split(",")[0].split("-")[0]


def torchrun_variables(environ: Mapping[str, str]) -> dict[str, str]:
    """torchrun's variables for a process ``srun`` started, or {} if torchrun (or nobody) did.

    torchrun's own variables win: ``srun torchrun ...`` (one task per node) keeps torchrun's ranks.
    The port follows PyTorch Lightning's SLURM convention, 15000 + the job id's last 4 digits
    (PyTorchLightning/pytorch-lightning@2b255a3df4e20911c5a3704e8004a6c6958f8dfc:
    pytorch_lightning/trainer/connectors/slurm_connector.py), so two jobs sharing a node do not
    collide; MASTER_ADDR / MASTER_PORT set by the user win.
    """
    if "WORLD_SIZE" in environ or "SLURM_PROCID" not in environ:
        return {}
    job_id = environ.get("SLURM_JOB_ID", "0")
    return {
        "RANK": environ["SLURM_PROCID"],
        "LOCAL_RANK": environ.get("SLURM_LOCALID", "0"),
        "WORLD_SIZE": environ.get("SLURM_NTASKS", "1"),
        "MASTER_ADDR": environ.get("MASTER_ADDR")
        or first_host(environ.get("SLURM_JOB_NODELIST", "127.0.0.1")),
        "MASTER_PORT": environ.get("MASTER_PORT") or str(15000 + int(job_id[-4:] or 0)),
    }


def init(device: str = "auto") -> Context:
    """Join the process group if torchrun or srun started us; pick this process's device."""
    os.environ.update(torchrun_variables(os.environ))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda:
        torch.cuda.set_device(local_rank)
        chosen = torch.device("cuda", local_rank)
    else:
        chosen = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Context(rank, local_rank, world_size, chosen)


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate a tensor from every process along dim 0, in rank order; no gradient flows back
    through the gather (MoCo's key queue and the feature gather need none). One process: the tensor."""
    if not is_initialized():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def shutdown() -> None:
    if is_initialized():
        dist.destroy_process_group()
