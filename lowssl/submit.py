"""``python -m lowssl.submit``: run a lowssl stage on SLURM through submitit, requeued on pre-emption.

    python -m lowssl.submit --nodes 2 --gpus-per-node 8 --partition gpu --timeout-min 4320 \\
        -- pretrain --config pretrain/configs/dino_resnet18_ours.yaml output_dir=runs/dino_r18
    python -m lowssl.submit --nodes 1 --gpus-per-node 8 --partition gpu \\
        -- detection train --config detection/configs/mask_rcnn_mobilenet_v2_fpn_1x.yaml --weights w.pkl

The pattern of DINO's launcher (facebookresearch/dino@7c446df5b9f45747937fb0d72314eb9f7b66930a:
run_with_submitit.py): a picklable job whose ``checkpoint`` method submitit calls on pre-emption or
timeout, returning the same job to resubmit. The job is ``python -m lowssl.<stage> <args>`` run in each task:

- ``pretrain`` (and evaluate, semisup): one task per GPU; :func:`lowssl.distributed.init` reads srun's
  variables. A requeued run resumes from ``output_dir/last.pth`` (``resume: auto``), so requeueing
  needs nothing more.
- ``detection train``: one task per machine, since Detectron2's ``launch`` starts one process per
  GPU itself; the job adds ``--num-gpus/--num-machines/--machine-rank/--dist-url`` from SLURM's
  variables and ``--resume`` (Detectron2 resumes from ``OUTPUT_DIR/last_checkpoint`` when there is
  one, and loads ``--weights`` when there is not).

submitit is optional (``pip install 'lowssl[cluster]'``). Where there is no SLURM (no ``sbatch`` on
PATH) it refuses, unless asked for a local run: ``--local`` (or ``--cluster local``) runs the same job
as one process on this machine, ``--cluster debug`` in this process. ``--dry-run`` prints the job it
would submit (sbatch parameters and each task's command) and submits nothing, with or without SLURM.
"""

from __future__ import annotations

import argparse
import os
import runpy
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from lowssl.distributed import torchrun_variables
from lowssl.errors import BadInput
from lowssl.paths import home

STAGES = ("pretrain", "evaluate", "semisup", "detection", "results")


class SubmitError(BadInput, ValueError):
    """The job cannot go where it was sent (no SLURM here, several machines for a local run)."""


@dataclass
class StageJob:
    """``python -m lowssl.<stage> <args>`` in one SLURM task; resubmitted as it is on pre-emption."""

    stage: str
    args: list[str]
    gpus_per_node: int = 0

    def command(self, environ) -> list[str]:
        """The stage's argv in this task (detection gets its machine layout from SLURM)."""
        if self.stage != "detection" or not self.args or self.args[0] != "train":
            return list(self.args)
        given = set(self.args)
        layout = {
            "--num-gpus": str(max(self.gpus_per_node, 1)),
            "--num-machines": environ.get("SLURM_NNODES", "1"),
            "--machine-rank": environ.get("SLURM_NODEID", "0"),
        }
        if int(layout["--num-machines"]) > 1:
            rendezvous = torchrun_variables({**environ, "SLURM_PROCID": "0"})
            layout["--dist-url"] = f"tcp://{rendezvous['MASTER_ADDR']}:{rendezvous['MASTER_PORT']}"
        added = [part for flag, value in layout.items() if flag not in given for part in (flag, value)]
        # Detectron2's opts (KEY VALUE ...) are a REMAINDER: lowssl's flags go before them.
        return ["train", *added, *([] if "--resume" in given else ["--resume"]), *self.args[1:]]

    def __call__(self) -> int:
        argv = self.command(os.environ)
        sys.argv = [f"python -m lowssl.{self.stage}", *argv]
        try:
            runpy.run_module(f"lowssl.{self.stage}", run_name="__main__", alter_sys=True)
        except SystemExit as stop:
            if stop.code not in (None, 0):
                raise
        return 0

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(StageJob(self.stage, self.args, self.gpus_per_node))


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(
        prog="python -m lowssl.submit",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    main.add_argument("--nodes", type=int, default=1)
    main.add_argument("--gpus-per-node", type=int, default=8)
    main.add_argument("--cpus-per-task", type=int, default=10)
    main.add_argument("--mem-gb", type=int, default=0, help="per node; 0: SLURM's default")
    main.add_argument("--timeout-min", type=int, default=2880, help="per job; requeued after it")
    main.add_argument("--partition")
    main.add_argument("--account")
    main.add_argument("--constraint")
    main.add_argument("--job-name", default="lowssl")
    main.add_argument(
        "--job-dir", type=Path, default=home() / "runs" / "slurm", help="submitit's logs (%%j: job id)"
    )
    main.add_argument(
        "--cluster",
        choices=("slurm", "local", "debug"),
        help="default: slurm; without SLURM (no sbatch), refused unless --local",
    )
    main.add_argument(
        "--local", action="store_true", help="no SLURM: run the job as one process on this machine"
    )
    main.add_argument(
        "--dry-run", action="store_true", help="print the job (sbatch parameters, command) and submit nothing"
    )
    main.add_argument("stage", choices=STAGES, help="the stage to run, then its own arguments")
    main.add_argument("stage_args", nargs=argparse.REMAINDER, help="the stage's arguments")
    return main


def choose_cluster(args: argparse.Namespace) -> str:
    """slurm, local or debug: what was asked for (``--local`` is ``--cluster local``), else slurm.
    SLURM where there is none, or several machines for a local run, is a :class:`SubmitError`."""
    if args.local and args.cluster not in (None, "local"):
        raise SubmitError(f"--local and --cluster {args.cluster} disagree: give one of them")
    cluster = "local" if args.local else args.cluster or "slurm"
    if cluster == "slurm" and not args.dry_run and shutil.which("sbatch") is None:
        raise SubmitError(
            "no SLURM on this machine (sbatch is not on PATH): submit from a SLURM login node, or "
            "pass --local to run the job as one process here (--dry-run shows the job without submitting)"
        )
    if cluster != "slurm" and args.nodes > 1:
        raise SubmitError(
            f"--nodes {args.nodes} needs SLURM; a {cluster} run is one process on this machine: "
            "drop --nodes, or submit from a SLURM login node"
        )
    return cluster


def job_parameters(args: argparse.Namespace, cluster: str) -> dict:
    """submitit's ``update_parameters``: one task per GPU (per machine for detection, see the module
    doc); local / debug runs are one process (submitit sets no SLURM variables for them)."""
    one_task = args.stage == "detection" or cluster in ("local", "debug")
    optional = {
        "slurm_partition": args.partition,
        "slurm_account": args.account,
        "slurm_constraint": args.constraint,
    }
    return dict(
        name=args.job_name,
        nodes=args.nodes,
        tasks_per_node=1 if one_task else max(args.gpus_per_node, 1),
        gpus_per_node=args.gpus_per_node,
        cpus_per_task=args.cpus_per_task,
        timeout_min=args.timeout_min,
        **({"mem_gb": args.mem_gb} if args.mem_gb else {}),
        **{key: value for key, value in optional.items() if value and cluster == "slurm"},
    )


def executor(args: argparse.Namespace):
    """A submitit executor for :func:`job_parameters`, on the cluster :func:`choose_cluster` picks."""
    try:
        import submitit
    except ImportError as error:
        raise SystemExit("lowssl.submit needs submitit: pip install 'lowssl[cluster]'") from error
    cluster = choose_cluster(args)
    chosen = submitit.AutoExecutor(folder=str(args.job_dir / "%j"), cluster=cluster)
    chosen.update_parameters(**job_parameters(args, cluster))
    return chosen


def describe(args: argparse.Namespace) -> str:
    """What ``--dry-run`` prints: the cluster, submitit's parameters and the command of the first task
    (detection's machine layout as node 0 of the job gets it)."""
    cluster = choose_cluster(args)
    parameters = job_parameters(args, cluster)
    job = StageJob(args.stage, args.stage_args, args.gpus_per_node)
    environ = {"SLURM_NNODES": str(args.nodes), "SLURM_NODEID": "0", "SLURM_JOB_NODELIST": "<first node>"}
    command = shlex.join(["python", "-m", f"lowssl.{args.stage}", *job.command(environ)])
    tasks = parameters["nodes"] * parameters["tasks_per_node"]
    lines = [
        f"dry run: nothing submitted; cluster {cluster}"
        + ("" if cluster != "slurm" or shutil.which("sbatch") else " (no sbatch on this machine)"),
        "sbatch parameters (submitit): " + ", ".join(f"{key}={value}" for key, value in parameters.items()),
        f"job folder: {args.job_dir / '%j'} (submitit's logs, %j: the job id)",
        f"each of the {tasks} task(s) runs: {command}",
    ]
    if args.stage == "detection" and args.nodes > 1:
        lines.append("(--machine-rank and --dist-url: from each machine's SLURM variables when it starts)")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.dry_run:
            print(describe(args))
            return 0
        chosen = executor(args)
    except SubmitError as error:  # bad input: one line, exit 2, as every lowssl CLI
        print(f"error: {error}", file=sys.stderr)
        return 2
    job = StageJob(args.stage, args.stage_args, args.gpus_per_node)
    submitted = chosen.submit(job)
    print(f"submitted {args.stage} as job {submitted.job_id}; logs in {args.job_dir / str(submitted.job_id)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
