"""Same seed, same numbers: run the tiny pipeline (pretrain -> linear -> k-NN -> semisup -> detection
convert) in a checkout and dump every number and every checkpoint tensor's hash, so that two checkouts
(e.g. before and after a refactor, the older one in a ``git worktree``) can be compared exactly.

    python tools/pipeline_equality.py run --checkout /tmp/before --prefix "" --out /tmp/eq/before.json
    python tools/pipeline_equality.py run --checkout . --out /tmp/eq/after.json
    python tools/pipeline_equality.py compare /tmp/eq/before.json /tmp/eq/after.json

``--prefix`` is how the checkout spells its stages as modules: ``lowssl.`` (``python -m lowssl.pretrain``,
since issue 28) or ``""`` (``python -m pretrain``, before). Each checkout runs from its own folder with
this interpreter, one thread, and its own ``LOWSSL_HOME``. What is compared: every record's value with
its run_id, stage, protocol and metric; its details minus paths and times; the pre-training log's
per-step losses and learning rates; the SHA-256 of every tensor in each checkpoint and in the
Detectron2 weights file. Both checkouts write into the same work folder (``--work``), so that paths in
configs hash alike. Left out: times, git commits and row hashes (which cover those); each checkpoint's
``rng/python`` (Python's ``random`` state, which no stage seeds or draws from: the interpreter seeds it
from the OS, so it differs between two runs of one checkout); and, since the pre-training checkpoint's
file hash covers that state, its SHA-256 is replaced by a placeholder wherever a record holds it, and
semisup's ``config_hash`` (a hash over it) is not compared.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

# Record details that name where or when something ran, not what it computed.
VOLATILE_DETAILS = {"run_dir", "created_at", "git_commit", "wall_s", "seconds", "images_per_s", "cache"}
VOLATILE_COLUMNS = {"created_at", "git_commit", "row_sha256", "details"}
VOLATILE_TENSORS = {"/rng/python"}
LOG_COLUMNS = ("epoch", "step", "loss", "lr", "wd", "teacher_momentum", "online_linear_top1")


def pipeline(prefix: str, work: Path) -> list[list[str]]:
    checkpoint = str(work / "pretrain" / "last.pth")
    records = ["--records-dir", str(work / "records")]
    subset = ["--train-subset", "1000", "--eval-subset", "500"]
    return [
        [f"{prefix}pretrain", "--config", "pretrain/configs/tiny/dino_resnet18_ours.yaml", "data.subset=320"]
        + ["epochs=1", "monitor.knn_every_epochs=0", f"output_dir={work / 'pretrain'}"]
        + [f"records_dir={work / 'records'}"],
        [f"{prefix}evaluate", "linear", "--checkpoint", checkpoint, "--protocol", "fast_tiny", *subset]
        + ["--output-dir", str(work / "evaluate"), *records],
        [f"{prefix}evaluate", "knn", "--checkpoint", checkpoint, "--protocol", "knn_tiny", *subset]
        + ["--output-dir", str(work / "evaluate"), *records],
        [f"{prefix}semisup", "finetune", "--checkpoint", checkpoint, "--subset", "1pct", "--protocol", "tiny"]
        + ["--max-steps", "5", "--max-eval-images", "500", "--output-dir", str(work / "semisup"), *records],
        [f"{prefix}detection", "convert", checkpoint, str(work / "r18.pkl")],
    ]


def tensor_hashes(obj, prefix: str = "") -> dict[str, str]:
    """SHA-256 of every tensor or array in a nested checkpoint, by its key path."""
    if prefix in VOLATILE_TENSORS:
        return {}
    if isinstance(obj, torch.Tensor):
        array = obj.detach().cpu().contiguous()
        return {
            prefix: f"{array.dtype} {tuple(array.shape)} "
            + hashlib.sha256(array.numpy().tobytes()).hexdigest()
        }
    if isinstance(obj, np.ndarray):
        return {prefix: f"{obj.dtype} {obj.shape} " + hashlib.sha256(obj.tobytes()).hexdigest()}
    if isinstance(obj, dict):
        return {
            k: v for key, value in obj.items() for k, v in tensor_hashes(value, f"{prefix}/{key}").items()
        }
    if isinstance(obj, list | tuple):
        return {k: v for i, value in enumerate(obj) for k, v in tensor_hashes(value, f"{prefix}/{i}").items()}
    return {}


def records(folder: Path, checkpoint_sha256: str) -> list[dict]:
    rows = []
    for path in sorted(folder.rglob("*.csv")):
        for row in csv.DictReader(path.open()):
            details = {
                k: v for k, v in json.loads(row["details"] or "{}").items() if k not in VOLATILE_DETAILS
            }
            kept = {k: v for k, v in row.items() if k not in VOLATILE_COLUMNS}
            if kept["stage"] == "semisup":
                kept["config_hash"] = "(a hash over the checkpoint file's SHA-256)"
            text = json.dumps({**kept, "details": json.dumps(details, sort_keys=True)}, sort_keys=True)
            for sha in (checkpoint_sha256, checkpoint_sha256[:12]):
                text = text.replace(sha, "<pretrain checkpoint>")
            rows.append(json.loads(text))
    return sorted(rows, key=lambda r: (r["stage"], r["protocol"], r["metric"]))


def run(checkout: Path, prefix: str, out: Path, work: Path) -> None:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "LOWSSL_HOME": str(work / "home"),
        "PYTHONWARNINGS": "ignore",
    }
    for command in pipeline(prefix, work):
        print("$ python -m", " ".join(command), flush=True)
        quiet = [] if command[1] == "convert" else ["--quiet"]
        subprocess.run([sys.executable, "-m", *command, *quiet], cwd=checkout, env=env, check=True)
    sha = hashlib.sha256((work / "pretrain" / "last.pth").read_bytes()).hexdigest()
    found = {"records": records(work / "records", sha)}
    log = work / "pretrain" / "log.csv"
    found["pretrain_log"] = [
        {k: row[k] for k in LOG_COLUMNS if k in row} for row in csv.DictReader(log.open())
    ]
    checkpoints = [work / "pretrain" / "last.pth", *sorted((work / "semisup").rglob("*.pth"))]
    for path in checkpoints:  # keyed by stage and file name: a run folder's name may change
        state = torch.load(path, map_location="cpu", weights_only=True)
        found[f"{path.relative_to(work).parts[0]}/{path.name}"] = tensor_hashes(state)
    with open(work / "r18.pkl", "rb") as file:
        found["r18.pkl"] = tensor_hashes(pickle.load(file)["model"])  # lowssl's own file: our output
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(found, indent=1, sort_keys=True))
    print(
        f"{out}: {len(found['records'])} records, {sum(len(v) for v in found.values() if isinstance(v, dict))} tensors"
    )


def compare(before: Path, after: Path) -> int:
    a, b = json.loads(before.read_text()), json.loads(after.read_text())
    differences = 0
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            differences += 1
            print(f"DIFFERENT: {key}")
            if isinstance(a.get(key), dict) and isinstance(b.get(key), dict):
                for k in sorted(set(a[key]) | set(b[key])):
                    if a[key].get(k) != b[key].get(k):
                        print(f"  {k}: {a[key].get(k)} != {b[key].get(k)}")
            elif isinstance(a.get(key), list):
                for x, y in zip(a[key], b.get(key) or [], strict=False):
                    if x != y:
                        print(f"  {x}\n  != {y}")
        else:
            size = len(a[key])
            print(f"equal: {key} ({size} {'rows' if isinstance(a[key], list) else 'tensors'})")
    print("IDENTICAL" if not differences else f"{differences} parts differ")
    return 1 if differences else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    one = commands.add_parser("run")
    one.add_argument("--checkout", type=Path, default=Path("."))
    one.add_argument("--prefix", default="lowssl.")
    one.add_argument("--out", type=Path, required=True)
    one.add_argument("--work", type=Path, default=Path("/tmp/lowssl-pipeline-equality"), help="emptied first")
    two = commands.add_parser("compare")
    two.add_argument("before", type=Path)
    two.add_argument("after", type=Path)
    args = parser.parse_args()
    if args.command == "run":
        run(args.checkout.resolve(), args.prefix, args.out.resolve(), args.work.resolve())
        return 0
    return compare(args.before, args.after)


if __name__ == "__main__":
    sys.exit(main())
