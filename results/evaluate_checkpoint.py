"""``make evaluate-checkpoint CKPT=...``: run the chosen stages on one checkpoint, then show its rows.

Any checkpoint the evaluation stage can read (lowssl's own or a third-party format) goes through the
stages' own commands, at the embedded-default scale (Fashion-MNIST, CPU): ``linear`` (``fast_tiny``
probe), ``knn`` (``knn_tiny``), ``semisup`` (1% labels, ``tiny`` protocol) and ``detection``
(conversion to Detectron2, then Mask R-CNN FPN on the embedded COCO-format set, ``tiny`` schedule);
``--quick`` shrinks each for a first look (:data:`QUICK`). Every stage appends its rows to the results
records; at the end the checkpoint's own rows are printed beside the rows of its backbone comparable
with them, and the whole leaderboard is written to ``results/leaderboard.csv`` (under ``$LOWSSL_HOME``
if set).

``CHECKPOINT`` is a file, or the name of a released checkpoint (``python -m lowssl.released list``;
docs/released.md): that one is fetched into the cache and read with the registry's format,
architecture and branch.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

from lowssl import released
from lowssl.checkpoints import open_checkpoint
from lowssl.cli import StageParser, run_stage
from lowssl.errors import BadInput
from lowssl.paths import home
from lowssl.results.commands import stage_command
from lowssl.results.stages import report_failure, run
from lowssl.semisup.model import HeadError, dino_head_layout

STAGES = ("linear", "knn", "semisup", "detection")
#: Each stage's own options by default: the stage's embedded defaults, linear on 10,000 training images.
FULL = {"linear": ("--train-subset", "10000"), "knn": (), "semisup": (), "detection": ()}
#: ``--quick``: smaller sets and fewer iterations for a first look (``--protocols linear``: 22 s of CPU
#: time instead of 62 s). The stages record what they shortened (the dataset tagged with its subsets,
#: the protocol with its overrides), so a quick number is never pooled with a full one.
QUICK = {
    "linear": ("--train-subset", "1000", "--eval-subset", "500"),
    "knn": ("--train-subset", "1000", "--eval-subset", "500"),
    "semisup": ("max_eval_images=1000",),
    # A 50-iteration model scores few boxes above the default threshold: 0 keeps some to score.
    "detection": (
        "SOLVER.MAX_ITER",
        "50",
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
        "0.0",
        "LOWSSL.FMNIST_DET.TRAIN_IMAGES",
        "200",
        "LOWSSL.FMNIST_DET.VAL_IMAGES",
        "50",
    ),
}


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


def detect(
    checkpoint: str,
    arch: str,
    options: list[str],
    folder: Path,
    records: list[str],
    overrides: Sequence[str] = (),
) -> None:
    """Convert the checkpoint to Detectron2's layout, then train Mask R-CNN FPN on the tiny schedule
    (changed by Detectron2 ``overrides``: KEY VALUE ...)."""
    allowed = detection_architectures()
    if allowed is not None and arch not in allowed:
        raise BadInput(f"detection has no registered backbone for '{arch}' (allowed: {', '.join(allowed)})")
    weights = folder / "weights.pkl"
    run(stage_command("detection", "convert", "--checkpoint", checkpoint, "--out", str(weights), *options))
    run(
        stage_command(
            "detection",
            "train",
            "--config",
            f"detection/configs/mask_rcnn_{arch}_fpn_tiny.yaml",
            "--weights",
            str(weights),
            "--output-dir",
            str(folder),
            *records,
            *overrides,
        )
    )


def evaluate_checkpoint(
    checkpoint: str,
    layout: dict[str, str],
    stages: list[str],
    work_dir: Path,
    runs_dir: str | None,
    quick: bool = False,
):
    """Run ``stages`` on the checkpoint (:data:`QUICK` sizes with ``quick``, else :data:`FULL`), then
    print its rows beside the comparable rows of its backbone and write the whole leaderboard."""
    sizes = QUICK if quick else FULL
    options = [part for key, value in layout.items() for part in (f"--{key}", value)]
    source = ["--checkpoint", checkpoint, *options]
    records = ["--records-dir", runs_dir] if runs_dir else []
    adapted = open_checkpoint(
        checkpoint, fmt=layout.get("format"), arch=layout.get("arch"), branch=layout.get("branch")
    )
    # One run folder per checkpoint and size: semisup names its records after its folder, and
    # detection resumes from what its folder holds.
    run_name = adapted.checkpoint_sha256[:12] + ("-quick" if quick else "")
    if "linear" in stages:
        run(
            stage_command(
                "evaluate",
                "linear",
                *source,
                "--protocol",
                "fast_tiny",
                *sizes["linear"],
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
                *sizes["knn"],
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
                str(work_dir / "semisup" / run_name),
                *records,
                *sizes["semisup"],
            )
        )
    if "detection" in stages:
        detect(
            checkpoint, adapted.arch, options, work_dir / "detection" / run_name, records, sizes["detection"]
        )
    leaderboard_runs = ["--runs-dir", runs_dir] if runs_dir else []
    whole = home() / "results" / "leaderboard.csv"
    run(
        stage_command(
            "results", "leaderboard", *leaderboard_runs, "--checkpoint", checkpoint, "--out", str(whole)
        )
    )


def main(argv=None) -> int:
    parser = StageParser(
        prog="python -m lowssl.results.evaluate_checkpoint", description=__doc__.splitlines()[0]
    )
    parser.add_argument("checkpoint", help="a checkpoint file, or a released checkpoint's name")
    parser.add_argument("--format", dest="fmt", help="force a checkpoint layout (default: detected)")
    parser.add_argument(
        "--protocols", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a first look: linear and k-NN on 1,000 training / 500 test images, semisup scored on "
        "1,000 images, detection 50 iterations on a smaller set (recorded as such, never pooled with "
        "full-size numbers)",
    )
    parser.add_argument("--work-dir", type=Path, default=home() / "runs" / "evaluate-checkpoint")
    parser.add_argument("--runs-dir", help="results records (default results/runs)")
    args = parser.parse_args(argv)
    stages = [s.strip() for s in args.protocols.split(",") if s.strip()]
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        parser.error(f"unknown protocol(s) {', '.join(unknown)}; allowed values: {', '.join(STAGES)}")
    fmt = None if args.fmt in (None, "auto") else args.fmt

    def body() -> int:
        checkpoint, layout = checkpoint_source(args.checkpoint, fmt)
        try:
            evaluate_checkpoint(checkpoint, layout, stages, args.work_dir, args.runs_dir, args.quick)
        except subprocess.CalledProcessError as error:
            return report_failure(error)
        return 0

    return run_stage(body)


if __name__ == "__main__":
    raise SystemExit(main())
