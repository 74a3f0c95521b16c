"""``make evaluate-checkpoint CKPT=...``: run the chosen stages on one checkpoint, then the leaderboard.

Any checkpoint the evaluation stage can read (lowssl's own or a third-party format) goes through the
stages' own commands, at the embedded-default scale (Fashion-MNIST, CPU): ``linear`` (``fast_tiny``
probe), ``knn`` (``knn_tiny``), ``semisup`` (1% labels, ``tiny`` protocol) and ``detection``
(conversion to Detectron2, then Mask R-CNN FPN on the embedded COCO-format set, ``tiny`` schedule).
Every stage appends its rows to the results records; the leaderboard is rebuilt at the end.

``CHECKPOINT`` is a file, or the name of a released checkpoint (``python -m lowssl.released list``;
docs/released.md): that one is fetched into the cache and read with the registry's format,
architecture and branch.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from lowssl import released
from lowssl.checkpoints import CheckpointLayoutError, open_checkpoint
from lowssl.io import CheckpointError
from lowssl.paths import home
from lowssl.results.commands import stage_command
from lowssl.results.stages import report_failure, run
from lowssl.semisup.model import HeadError, dino_head_layout

STAGES = ("linear", "knn", "semisup", "detection")


def _has_dino_head(adapted) -> bool:
    if adapted.head_state is None:
        return False
    try:
        dino_head_layout(adapted.head_state)
    except HeadError:
        return False
    return True


def checkpoint_source(checkpoint: str, fmt: str | None) -> tuple[str, dict[str, str]]:
    """(the file, its layout: format / arch / branch where known). A path is used as given, read with
    ``fmt`` or the detected format; a name without a file of that name is a released checkpoint,
    fetched (or found in the cache) and read as the registry declares it."""
    path = Path(checkpoint)
    if path.exists() or path.suffix or len(path.parts) > 1:
        return checkpoint, ({"format": fmt} if fmt else {})
    entry = released.resolve(checkpoint)
    if fmt not in (None, entry.format):
        raise released.ReleasedError(
            f"{entry.name} is a released checkpoint of format '{entry.format}'; drop --format {fmt}"
        )
    return str(released.fetch(entry.name)), {
        "format": entry.format,
        "arch": entry.arch,
        "branch": entry.branch,
    }


def detection_architectures() -> tuple[str, ...] | None:
    """The backbones detection trains, asked only when it runs; None where importing the stage fails
    (Detectron2 not installed): its own ``convert`` command then says what is missing."""
    try:
        from lowssl.detection.archs import architectures
    except ImportError:
        return None
    return architectures()


def detect(checkpoint: str, arch: str, options: list[str], work_dir: Path, records: list[str]) -> None:
    """Convert the checkpoint to Detectron2's layout, then train Mask R-CNN FPN on the tiny schedule."""
    allowed = detection_architectures()
    if allowed is not None and arch not in allowed:
        raise SystemExit(
            f"error: detection has no registered backbone for '{arch}' (allowed: {', '.join(allowed)})"
        )
    weights = work_dir / "detection" / "weights.pkl"
    run(stage_command("detection", "convert", checkpoint, str(weights), *options))
    run(
        stage_command(
            "detection",
            "train",
            "--config",
            f"detection/configs/mask_rcnn_{arch}_fpn_tiny.yaml",
            "--weights",
            str(weights),
            "--output-dir",
            str(work_dir / "detection"),
            *records,
        )
    )


def evaluate_checkpoint(
    checkpoint: str, layout: dict[str, str], stages: list[str], work_dir: Path, runs_dir: str | None
):
    options = [part for key, value in layout.items() for part in (f"--{key}", value)]
    source = ["--checkpoint", checkpoint, *options]
    records = ["--records-dir", runs_dir] if runs_dir else []
    adapted = open_checkpoint(
        checkpoint, fmt=layout.get("format"), arch=layout.get("arch"), branch=layout.get("branch")
    )
    if "linear" in stages:
        run(
            stage_command(
                "evaluate",
                "linear",
                *source,
                "--protocol",
                "fast_tiny",
                "--train-subset",
                "10000",
                "--output-dir",
                str(work_dir / "evaluate"),
                *records,
            )
        )
    if "knn" in stages:
        run(
            stage_command(
                "evaluate",
                "knn",
                *source,
                "--protocol",
                "knn_tiny",
                "--output-dir",
                str(work_dir / "evaluate"),
                *records,
            )
        )
    if "semisup" in stages:
        # The paper fine-tunes from the checkpoint's DINO projection head; anything else gets new layers.
        head = [] if _has_dino_head(adapted) else ["--new-head"]
        run(
            stage_command(
                "semisup",
                "finetune",
                *source,
                "--subset",
                "1pct",
                "--protocol",
                "tiny",
                *head,
                "--output-dir",
                str(work_dir / "semisup"),
                *records,
            )
        )
    if "detection" in stages:
        detect(checkpoint, adapted.arch, options, work_dir, records)
    leaderboard_runs = ["--runs-dir", runs_dir] if runs_dir else []
    run(stage_command("results", "leaderboard", *leaderboard_runs, "--out", "results/leaderboard.csv"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lowssl.results.evaluate_checkpoint", description=__doc__.splitlines()[0]
    )
    parser.add_argument("checkpoint", help="a checkpoint file, or a released checkpoint's name")
    parser.add_argument("--format", dest="fmt", help="force a checkpoint layout (default: detected)")
    parser.add_argument(
        "--protocols", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}"
    )
    parser.add_argument("--work-dir", type=Path, default=home() / "runs" / "evaluate-checkpoint")
    parser.add_argument("--runs-dir", help="results records (default results/runs)")
    args = parser.parse_args(argv)
    stages = [s.strip() for s in args.protocols.split(",") if s.strip()]
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        parser.error(f"unknown protocol(s) {', '.join(unknown)}; allowed values: {', '.join(STAGES)}")
    fmt = None if args.fmt in (None, "auto") else args.fmt
    try:
        checkpoint, layout = checkpoint_source(args.checkpoint, fmt)
        evaluate_checkpoint(checkpoint, layout, stages, args.work_dir, args.runs_dir)
    except subprocess.CalledProcessError as error:
        return report_failure(error)
    except (CheckpointLayoutError, CheckpointError, released.ReleasedError) as error:
        # the file, or fetching it: one line, as the stages print
        print("error: " + " ".join(str(error).split()), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
