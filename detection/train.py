"""``python -m lowssl.detection train``: Mask R-CNN FPN through Detectron2's DefaultTrainer and ``launch``.

One process per GPU (``--num-gpus``) on each of ``--num-machines`` machines, as Detectron2's own
``facebookresearch/detectron2@v0.6:tools/train_net.py``. Training ends with COCO evaluation on
DATASETS.TEST (pycocotools' COCOeval, the Python one where the compiled ops are absent) and the main
process appends the box and mask AP, AP50, AP75 to the results records as metrics
``coco_<schedule>_APbb`` ... ``coco_<schedule>_APmk75``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import math
import sys
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch
from detectron2.config import CfgNode
from detectron2.engine import DefaultTrainer, launch
from detectron2.evaluation import COCOEvaluator
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger

from lowssl.config import changed_values
from lowssl.detection import compat
from lowssl.detection.config import config_arch, load_config
from lowssl.detection.datasets import prepare_datasets, register_datasets
from lowssl.detection.weights import WeightsOnlyCheckpointer, read_pickle_metadata
from lowssl.errors import BadInput
from lowssl.io import atomic_write_text, git_commit, load_checkpoint, sha256_file
from lowssl.paths import home
from lowssl.progress import say, set_quiet
from lowssl.protocols import protocol_identity
from lowssl.records import Record, append_records, build_records
from lowssl.released import record_details
from lowssl.run_lock import run_folder_lock
from lowssl.subject import RANDOM_INIT as RANDOM_INIT_METHOD
from lowssl.subject import Subject

METRICS = {
    ("bbox", "AP"): "APbb",
    ("bbox", "AP50"): "APbb50",
    ("bbox", "AP75"): "APbb75",
    ("segm", "AP"): "APmk",
    ("segm", "AP50"): "APmk50",
    ("segm", "AP75"): "APmk75",
}
RANDOM_INIT = "none"  # --weights none
#: The schedules of the paper's Table 4 (LOWSSL.SCHEDULE); "tiny" is lowssl's own.
PAPER_SCHEDULES = ("1x", "2x")

logger = logging.getLogger(__name__)


class Trainer(DefaultTrainer):
    def __init__(self, cfg: CfgNode, trust_weights: bool = False) -> None:
        super().__init__(cfg)
        # Loading (MODEL.WEIGHTS, --resume) goes through lowssl's safe loaders, never a full unpickle
        # (detection/weights.py); the periodic-checkpoint hook keeps saving through Detectron2's.
        self.checkpointer = WeightsOnlyCheckpointer(
            self._trainer.model, cfg.OUTPUT_DIR, trust=trust_weights, trainer=weakref.proxy(self)
        )

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or str(Path(cfg.OUTPUT_DIR) / "inference" / dataset_name)
        return COCOEvaluator(dataset_name, output_dir=output_folder, use_fast_impl=compat.has_compiled_ops())


class TrainError(BadInput, ValueError):
    """The command line or the config asks for something this run cannot do."""


@dataclass(frozen=True)
class WeightsSource:
    """What ``--weights`` are, for the records: the subject they came from and the file trained from."""

    subject: Subject  # from the pickle's "lowssl" entry (detection convert), a random init, or unknown
    weights_sha256: str  # of the --weights file ("" for a random init)
    source: str  # the checkpoint `detection convert` read ("" for weights it did not write)
    tag: str  # names the run's default output folder and its records


def weights_source(weights: str, arch: str, trust: bool = False) -> WeightsSource:
    """What the weights are, for the records; a converted checkpoint of another backbone is an error.
    The file is read here, before any process starts, so an unsafe or broken one stops the run in one
    line (the same safe loaders as the trainer's, detection/weights.py)."""
    if weights == RANDOM_INIT:
        return WeightsSource(Subject.random_init(arch, None, ""), "", "", "random-init")
    path = Path(weights)
    if not path.is_file():
        raise TrainError(
            f"--weights {weights} does not exist (make one with `python -m lowssl.detection convert`)"
        )
    weights_sha256 = sha256_file(path)
    if path.suffix == ".pkl":
        metadata = read_pickle_metadata(path, trust)
    else:
        load_checkpoint(path, trust=trust)
        metadata = None
    if metadata is None:  # Detectron2 model zoo or other weights: load them, but they say nothing
        logger.warning(
            "%s was not written by `python -m lowssl.detection convert`: its backbone is not checked", path
        )
        return WeightsSource(
            Subject.unknown_weights(weights_sha256, arch), weights_sha256, "", weights_sha256[:12]
        )
    subject = Subject.from_payload(metadata, f"weights file {path}")
    if subject.arch != arch:
        raise TrainError(f"--weights {weights} holds a {subject.arch} backbone, the config builds a {arch}")
    return WeightsSource(subject, weights_sha256, str(metadata.get("source", "")), subject.checkpoint[:12])


def setup_logging(output_dir: str, rank: int, quiet: bool = False) -> None:
    """Detectron2's loggers: the console and OUTPUT_DIR/log.txt; ``quiet`` (--quiet): warnings and errors
    only on the console, the file keeps everything."""
    for name in ("detectron2", "fvcore", "detection"):
        setup_logger(output_dir, distributed_rank=rank, name=name)
        for handler in logging.getLogger(name).handlers if quiet else ():
            if getattr(handler, "stream", None) in (sys.stdout, sys.stderr):  # log.txt is a stream too
                handler.setLevel(logging.WARNING)


def setup(args) -> CfgNode:
    """The run's config: the file, the overrides, --weights and --output-dir applied; frozen."""
    cfg = load_config(args.config, args.opts)
    cfg.MODEL.WEIGHTS = "" if args.weights == RANDOM_INIT else str(Path(args.weights).resolve())
    cfg.OUTPUT_DIR = str(args.output_dir)
    cfg.freeze()
    return cfg


def default_output_dir(config: Path, arch: str, source: WeightsSource) -> Path:
    return home() / "runs" / "detection" / f"{config.stem}-{arch}-{source.tag}"


def train_worker(args, source: WeightsSource) -> None:
    """One training process (of num_machines x num_gpus); the main one writes the records."""
    cfg = setup(args)
    rank = comm.get_rank()
    setup_logging(cfg.OUTPUT_DIR, rank, args.quiet)
    set_quiet(args.quiet)  # a launched worker is a new process
    register_datasets(cfg)
    # As Detectron2's default_setup (which also collects environment information through the compiled
    # ops, so it is not called): each process seeded differently, deterministically if SEED >= 0.
    seed_all_rng(None if cfg.SEED < 0 else cfg.SEED + rank)
    torch.backends.cudnn.benchmark = cfg.CUDNN_BENCHMARK
    start = time.time()
    trainer = Trainer(cfg, trust_weights=args.trust_checkpoint)
    trainer.resume_or_load(resume=args.resume)
    # --quiet: pycocotools prints its evaluation to stdout (Detectron2 logs the same AP to log.txt)
    with contextlib.redirect_stdout(io.StringIO()) if args.quiet else contextlib.nullcontext():
        trainer.train()
    wall_s = time.time() - start
    # DefaultTrainer.train returns the final evaluation only when TEST.EXPECTED_RESULTS is set; its
    # evaluation hook always keeps it here (filled on the main process).
    results = getattr(trainer, "_last_eval_results", None) or {}
    if comm.is_main_process():
        records = result_records(cfg, args, source, results, wall_s)
        path = append_records(records, args.records_dir)
        logger.info("wall time %.1f s; results %s; records %s", wall_s, dict(results), path)
        scores = ", ".join(f"{record.metric} {record.value:.2f}" for record in records)
        print(  # the closing line, under --quiet too
            f"detection done after {wall_s:.0f} s: {scores}; weights {Path(cfg.OUTPUT_DIR, 'model_final.pth')}; "
            f"log {Path(cfg.OUTPUT_DIR, 'log.txt')}; records {path}",
            flush=True,
        )


def result_records(cfg: CfgNode, args, source: WeightsSource, results: dict, wall_s: float) -> list[Record]:
    schedule = cfg.LOWSSL.SCHEDULE
    if not schedule:
        raise TrainError(f"{args.config} sets no LOWSSL.SCHEDULE (1x, 2x or tiny), which names the metrics")
    arch, subject = config_arch(cfg), source.subject
    details = {
        "weights": cfg.MODEL.WEIGHTS or RANDOM_INIT,
        "weights_sha256": source.weights_sha256,
        # a random init names no format (as before the subject was lowssl.subject's)
        "source_format": "" if subject.method == RANDOM_INIT_METHOD else subject.format,
        "source_checkpoint": source.source,
        "fpn_in_features": list(cfg.MODEL.FPN.IN_FEATURES),
        "max_iter": cfg.SOLVER.MAX_ITER,
        "ims_per_batch": cfg.SOLVER.IMS_PER_BATCH,
        "world_size": comm.get_world_size(),
        "device": cfg.MODEL.DEVICE,
        "wall_time_s": round(wall_s, 1),
        "compiled_ops": compat.has_compiled_ops(),
        "overrides": list(args.opts),
        "output_dir": cfg.OUTPUT_DIR,
        "seed": cfg.SEED,
        **subject.record_details(),  # pretrain_budget: numbers of different budgets never pool
        **record_details(source.source, subject.checkpoint),  # a released checkpoint: how verified
    }
    protocol, details["paper_protocol"] = protocol_identity(
        Path(args.config).stem,
        schedule in PAPER_SCHEDULES,
        changed_values(*protocol_values(args.config, args.opts)),
    )
    values = {
        f"coco_{schedule}_{name}": results[task][key]
        for (task, key), name in METRICS.items()
        if task in results and key in results[task]
    }
    if not values:
        raise TrainError(f"no box or mask AP to record: DATASETS.TEST is {cfg.DATASETS.TEST}")
    # COCOeval gives NaN when there is nothing to score (no detections): not a number to record.
    details["not_computed"] = sorted(metric for metric, value in values.items() if not math.isfinite(value))
    if len(details["not_computed"]) == len(values):
        raise TrainError(
            f"no AP could be computed on {cfg.DATASETS.TEST[0]} (the model made no detections after "
            f"{cfg.SOLVER.MAX_ITER} iterations): nothing is recorded; train longer (SOLVER.MAX_ITER)"
        )
    return build_records(
        {metric: value for metric, value in values.items() if metric not in details["not_computed"]},
        protocol,
        run_id=f"detection-{source.tag}-{arch}-{subject.branch}",
        stage="detection",
        dataset=cfg.DATASETS.TEST[0],
        config_hash=_config_hash(cfg),
        git_commit=git_commit(),
        details=details,
        **subject.record_columns(),  # its backbone is the config's: weights_source checked it
    )


#: Overrides that do not change what is measured: where things run and live, and the seed (a column).
NOT_PROTOCOL = {
    "MODEL.DEVICE",
    "OUTPUT_DIR",
    "SEED",
    "DATALOADER.NUM_WORKERS",
    "LOWSSL.FMNIST_DET.ROOT",
    "LOWSSL.VALIDATE_DATASETS",
}


def protocol_values(config: str | Path, opts: list[str]) -> tuple[dict, dict]:
    """The config's own values and the run's of the keys the ``KEY VALUE`` overrides name (those of
    :data:`NOT_PROTOCOL` aside): a run where they differ is another protocol
    (lowssl.protocols.protocol_identity), never grouped with the paper's rows. Only the named keys:
    what load_config derives from them (BN for SyncBN on the CPU) goes with them."""
    own, overridden = load_config(config), load_config(config, opts)
    keys = [key for key in opts[::2] if key not in NOT_PROTOCOL]
    return {key: _lookup(own, key) for key in keys}, {key: _lookup(overridden, key) for key in keys}


def _lookup(cfg: CfgNode, dotted: str):
    for part in dotted.split("."):
        cfg = cfg[part]
    return list(cfg) if isinstance(cfg, tuple) else cfg


def _config_hash(cfg: CfgNode) -> str:
    return hashlib.sha256(cfg.dump().encode()).hexdigest()[:16]


def train(args) -> int:
    cfg = load_config(args.config, args.opts)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        raise TrainError(
            f"{args.config} trains on {cfg.MODEL.DEVICE} but CUDA is unavailable; "
            "add MODEL.DEVICE cpu (slow) or run on a GPU machine"
        )
    if cfg.MODEL.DEVICE == "cpu" and args.num_gpus * args.num_machines > 1:
        raise TrainError("--num-gpus / --num-machines above 1 need MODEL.DEVICE cuda")
    arch = config_arch(cfg)
    source = weights_source(args.weights, arch, args.trust_checkpoint)
    args.output_dir = Path(args.output_dir or default_output_dir(Path(args.config), arch, source))
    if args.print_config:
        print(setup(args).dump(), end="")
        return 0
    # one live run per OUTPUT_DIR (lowssl.run_lock), held by the first machine's launcher for the run
    with run_folder_lock(args.output_dir, args.machine_rank == 0):
        setup_logging(str(args.output_dir), args.machine_rank * args.num_gpus, args.quiet)
        if args.machine_rank == 0:
            resumed = args.resume and (args.output_dir / "last_checkpoint").is_file()
            say(
                f"detection train: {'resuming from its last_checkpoint' if resumed else 'fresh run'} in "
                f"{args.output_dir.absolute()}; weights {args.weights}; {cfg.MODEL.DEVICE} x "
                f"{args.num_gpus * args.num_machines} processes, {torch.get_num_threads()} threads; full log "
                f"{args.output_dir.absolute() / 'log.txt'}; records -> {Path(args.records_dir).absolute()}"
            )
        prepare_datasets(cfg)
        if args.machine_rank == 0:
            atomic_write_text(args.output_dir / "config.yaml", setup(args).dump())
        launch(
            train_worker,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args, source),
        )
    return 0
