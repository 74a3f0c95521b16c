"""What the stages print: a banner and a closing line that say where things went and why a run
stopped, plain progress lines (no carriage returns) when the output is a file, ``--quiet``; and the
command lines of ``lowssl.released``. Real processes with their output redirected to files."""

import fcntl
import importlib
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
import torch
from test_evaluate import _separable_image_folder
from test_pretrain_engine import REPO, TINY, tiny_overrides

from lowssl.config import ConfigError
from lowssl.io import load_checkpoint, sha256_file
from lowssl.released import main as released_main
from lowssl.semisup.arguments import FinetuneArgs
from lowssl.subject import Subject

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _run(command: list[str], tmp_path: Path, name: str, env=ENV) -> tuple[int, str, str]:
    """Run ``command`` with stdout and stderr redirected to files (as a batch job's log is)."""
    out, err = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
    with open(out, "w") as stdout, open(err, "w") as stderr:
        code = subprocess.run(
            command, cwd=REPO, env=env, stdout=stdout, stderr=stderr, timeout=300
        ).returncode
    return code, out.read_text(), err.read_text()


def _pretrain(tmp_path: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "lowssl.pretrain",
        "--config",
        str(TINY["dino"]),
        *tiny_overrides(tmp_path),
        *extra,
    ]


def test_pretrain_says_where_it_went_and_why_it_stopped(tmp_path):
    """Before: no banner; a max_steps=3 run ended silently (its bar left at 2/N); re-running it printed
    "resumed from ..." only, and trained a 4th step past max_steps."""
    run = tmp_path / "run"
    code, out, err = _run(_pretrain(tmp_path, "max_steps=3"), tmp_path, "first")
    assert code == 0, err
    assert err.splitlines()[0].startswith(
        f"pretrain tiny_dino_mobilenet_v2_ours: fresh run in {run}; 2 epochs of 7 "
    )
    assert (
        f"records -> {tmp_path / 'records'}/pretrain-tiny_dino_mobilenet_v2_ours-seed0-"
        in err.splitlines()[0]
    )
    (closing,) = out.splitlines()
    assert closing.startswith("pretrain stopped at max_steps=3 after ")
    assert closing.endswith(
        f"global step 3 (epoch 1, step 3 of 7); checkpoint {run / 'last.pth'}; "
        "no records (no epoch ended with a monitor value)"
    )
    assert "\r" not in out + err, "no progress bar in a redirected log"

    code, out, err = _run(_pretrain(tmp_path, "max_steps=3"), tmp_path, "again")
    assert code == 0, err
    assert f"resumed from {run / 'last.pth'} at global step 3 in {run}" in err.splitlines()[0]
    assert out == (
        f"pretrain already complete: {run / 'last.pth'} holds global step 3 (epoch 1, step 3 of 7); nothing "
        "was trained (raise epochs= or max_steps= to continue it, resume=never to start over)\n"
    )
    assert torch.load(run / "last.pth", weights_only=True)["global_step"] == 3, "no step past max_steps"


def test_quiet_pretrain_prints_its_closing_line_only(tmp_path):
    code, out, err = _run(
        _pretrain(tmp_path, "epochs=1", "data.subset=16", "monitor.knn_k=5", "--quiet"), tmp_path, "quiet"
    )
    assert (code, err) == (0, "")
    (closing,) = out.splitlines()
    records = next((tmp_path / "records").glob("pretrain-*.csv"))
    assert closing.startswith("pretrain done after ")
    assert closing.endswith(
        f"(end of epoch 1 of 1); checkpoint {tmp_path / 'run' / 'last.pth'}; records {records}"
    )


PROGRESS = """
import sys
from lowssl.progress import progress
bar = progress(range(4), "work", leave=True)
for i in bar:
    bar.set_postfix(item=i)
"""


def test_progress_is_plain_lines_in_a_log_and_a_bar_on_a_terminal(tmp_path):
    """LOWSSL_PROGRESS_SECONDS=0: a line after every step (60 s apart by default)."""
    env = {**ENV, "LOWSSL_PROGRESS_SECONDS": "0"}
    code, out, err = _run([sys.executable, "-c", PROGRESS], tmp_path, "log", env)
    assert (code, out) == (0, "")
    lines = err.splitlines()
    assert [line.split(",")[0] for line in lines] == [
        "work: 1/4 (25%)",
        "work: 2/4 (50%)",
        "work: 3/4 (75%)",
        "work: 4/4 (100%)",
        "work: 4/4 (100%)",  # leave=True: the line it ends with
    ]
    assert lines[-1].endswith(", item 3") and "\r" not in err

    leader, follower = pty.openpty()  # a terminal: tqdm's bar, redrawn with carriage returns
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))  # 80 columns, not 0
    try:
        done = subprocess.run(
            [sys.executable, "-c", PROGRESS], cwd=REPO, env=env, stderr=follower, stdout=subprocess.DEVNULL
        )
        os.close(follower)
        shown = b""
        while True:  # to the end of what it wrote (EIO once the terminal's other end is closed)
            try:
                chunk = os.read(leader, 65536)
            except OSError:
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(leader)
    assert done.returncode == 0 and b"\r" in shown and b"4/4" in shown


def _linear(tmp_path: Path, data: Path, *extra: str) -> list[str]:
    return [
        *(
            sys.executable,
            "-m",
            "lowssl.evaluate",
            "linear",
            "--raw-pixels",
            "--protocol",
            "fast_tiny",
            "epochs=30",
        ),
        *("--dataset", "imagefolder", "--data-root", str(data), "--workers", "0", "--device", "cpu"),
        *("--output-dir", str(tmp_path / "out"), "--records-dir", str(tmp_path / "records"), "--no-cache"),
        *extra,
    ]


def test_a_redirected_linear_probe_log_is_a_few_lines(tmp_path):
    """Before: every bar update (feature extraction, 30 epochs) went into the log with a carriage return."""
    data = tmp_path / "data"
    _separable_image_folder(data)
    code, out, err = _run(_linear(tmp_path, data), tmp_path, "linear")
    assert code == 0, err
    assert "\r" not in out + err
    assert err.splitlines()[0].startswith(
        "evaluate linear fast_tiny+epochs=30: pixels/none raw-pixels on imagefolder:data"
    )
    assert out.splitlines()[-1].startswith(
        "linear fast_tiny+epochs=30 [not a paper protocol] on imagefolder:data"
    )
    assert len((out + err).splitlines()) <= 5, out + err

    code, out, err = _run(_linear(tmp_path, data, "--quiet"), tmp_path, "quiet")
    assert (code, err) == (0, "")
    *warnings, result = out.splitlines()
    assert all(line.startswith("warning: ") for line in warnings), "warnings print under --quiet too"
    assert "linear_top1 100.00" in result and f"records: {tmp_path / 'records'}" in result


def test_released_takes_cache_dir_after_the_command(tmp_path, capsys):
    """Before: ``fetch NAME --cache-dir D`` was "unrecognized arguments: --cache-dir D"; ``list`` began
    with the column names; --help's description stopped mid-sentence ("... download into a")."""
    assert released_main(["fetch", "no_such_checkpoint", "--cache-dir", str(tmp_path)]) == 2
    assert "no released checkpoint is named 'no_such_checkpoint'" in capsys.readouterr().err
    assert released_main(["list", "--cache-dir", str(tmp_path)]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert f"released checkpoints (lowssl/released.yaml); cache {tmp_path};" in first
    assert released_main(["--cache-dir", str(tmp_path), "list"]) == 0, "before the command, as it was"
    assert f"cache {tmp_path};" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        released_main(["--help"])
    assert "verified download into a cache (docs/released.md)." in " ".join(capsys.readouterr().out.split())


def test_quiet_detection_prints_its_closing_line_only(tmp_path):
    """Before: a 344-line model print and Detectron2's raw AP dict, no records path; --quiet did not
    exist. Now --quiet keeps Detectron2's INFO lines in OUTPUT_DIR/log.txt only."""
    helpers = pytest.importorskip("test_detection", reason="detection needs Detectron2")
    root = helpers.generate(tmp_path / "det", helpers.DATASET_SPEC)
    run, records = tmp_path / "run", tmp_path / "records"
    command = [sys.executable, "-m", "lowssl.detection", "train", "--config", str(helpers.TINY["resnet18"])]
    command += ["--weights", "none", "--output-dir", str(run), "--records-dir", str(records), "--quiet"]
    command += [*helpers.dataset_opts(root), *helpers.SMALL_SAMPLING]
    command += ["SOLVER.MAX_ITER", "1", "SOLVER.IMS_PER_BATCH", "2"]
    code, out, err = _run(command, tmp_path, "detection")
    assert code == 0, err
    *warnings, closing = out.splitlines()
    assert all(line.startswith("WARNING") for line in warnings), "Detectron2's warnings, no INFO line"
    assert closing.startswith("detection done after ") and ": coco_tiny_APbb " in closing
    assert closing.endswith(f"log {run / 'log.txt'}; records {next(records.glob('*.csv'))}")
    assert "Model:" not in out + err and "Model:" in (run / "log.txt").read_text()


def test_a_finished_semisup_run_is_already_complete(tmp_path):
    """Before: re-running a max_steps=2 run trained a 3rd step and recorded its new score (measured:
    top-1 25.00 -> 12.50 on the same command)."""
    from test_semisup import smoke

    from lowssl.semisup.train import finetune

    args = smoke(tmp_path, checkpoint=None, random_init=True, arch="resnet18")
    first = finetune(args)
    again = finetune(args)
    assert (first["stopped_by"], again["stopped_by"]) == ("stopped at max_steps=2", "already complete")
    assert again["top1"] == first["top1"] and again["records"] == first["records"]
    assert load_checkpoint(tmp_path / "run" / "last.pth")["global_step"] == 2


# One CLI convention (issue 27): the spellings of an older release, each refused with one line that
# spells the same command the new way.
OLD_SPELLINGS = [
    (
        "evaluate",
        ["inspect", "runs/x/last.pth"],
        "error: the checkpoint is given as --checkpoint PATH now: "
        "python -m lowssl.evaluate inspect --checkpoint runs/x/last.pth",
    ),
    (
        "evaluate",
        ["export", "runs/x/last.pth", "--to", "timm", "--out", "r18.pth"],
        "error: the checkpoint is given as --checkpoint PATH now: "
        "python -m lowssl.evaluate export --checkpoint runs/x/last.pth --to timm --out r18.pth",
    ),
    (
        "detection",
        ["convert", "runs/x/last.pth", "runs/x/r18.pkl"],
        "error: the checkpoint and the pickle to write are given as --checkpoint PATH --out PATH now: "
        "python -m lowssl.detection convert --checkpoint runs/x/last.pth --out runs/x/r18.pkl",
    ),
    (
        "semisup",
        ["finetune", "--random-init", "--arch", "resnet18", "--subset", "1pct", "--protocol", "tiny"]
        + ["--max-steps", "5", "--max-eval-images", "500"],
        "error: --max-steps N, --max-eval-images N are the overrides max_steps=N, max_eval_images=N now: "
        "python -m lowssl.semisup finetune --random-init --arch resnet18 --subset 1pct --protocol tiny "
        "max_steps=5 max_eval_images=500",
    ),
]


@pytest.mark.parametrize(
    ("stage", "argv", "line"), OLD_SPELLINGS, ids=[" ".join(s[1][:1]) for s in OLD_SPELLINGS]
)
def test_an_old_spelling_is_refused_naming_the_new_one(stage, argv, line, capsys):
    """Before: inspect, export and convert took the checkpoint positionally while linear, knn and
    finetune took --checkpoint; semisup's smoke limits were flags where pretrain's are overrides."""
    if stage == "detection":
        pytest.importorskip("detectron2", reason="detection needs Detectron2")
    main = importlib.import_module(f"lowssl.{stage}.__main__").main
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    assert capsys.readouterr().err.splitlines() == [line]


def test_semisup_smoke_limits_as_overrides_make_the_same_run_and_records():
    """``max_steps=5 max_eval_images=500`` sets what ``--max-steps 5 --max-eval-images 500`` set: the
    same fields, recorded overrides (the protocol ``tiny+max_eval_images=500+max_steps=5``) and folder."""
    common = {"subset": "1pct", "random_init": True, "arch": "resnet18", "protocol": "tiny"}
    by_override = FinetuneArgs(**common, overrides=["epochs=1", "max_steps=5", "max_eval_images=500"])
    by_field = FinetuneArgs(**common, overrides=["epochs=1"], max_steps=5, max_eval_images=500)
    assert (by_override.max_steps, by_override.max_eval_images, by_override.overrides) == (
        5,
        500,
        ["epochs=1"],
    )
    assert by_override.recorded_overrides() == by_field.recorded_overrides()
    subject = Subject.random_init("resnet18", 0, "random-init:resnet18")
    assert (
        by_override.run_name(subject)
        == by_field.run_name(subject)
        == "random_resnet18_tiny_fashion-mnist_1pct"
    )
    with pytest.raises(ConfigError, match="max_steps=0': expected an integer > 0"):
        FinetuneArgs(**common, overrides=["max_steps=0"])


def test_semisup_default_folders_of_two_runs_last_pth_never_collide(tmp_path):
    """Before: runs/semisup/last_tiny_fashion-mnist_1pct for every pre-training run's last.pth, so the
    second run's fine-tuning was refused (and --resume never would have overwritten the first's)."""
    names = []
    for run in ("dino_a", "dino_b"):
        checkpoint = tmp_path / run / "last.pth"
        checkpoint.parent.mkdir()
        checkpoint.write_bytes(run.encode())
        args = FinetuneArgs(subset="1pct", checkpoint=str(checkpoint), protocol="tiny")
        subject = Subject(sha256_file(checkpoint), "resnet18", "student", "lowssl", "dino", "ours", 1)
        names.append(args.run_name(subject))
    assert names[0] != names[1]
    assert names[0] == f"dino_a-{sha256_file(tmp_path / 'dino_a' / 'last.pth')[:8]}_tiny_fashion-mnist_1pct"
