"""Every command of README.md and docs/*.md is real: its module, flags and overrides exist.

Each fenced shell block (```bash, ```sh, ```shell) is read line by line (``\\`` continuations joined,
comments dropped). A line that runs a lowssl module -- ``python -m <module> ...``, also after
``torchrun``, ``srun`` or ``python -m lowssl.submit ... --`` -- is run in this process as ``python -m``
would run it (:func:`runpy.run_module`), with ``argparse`` stopped right after parsing: an unknown
flag, a missing required one or a value outside its choices fails here exactly as on the command
line. Where the command takes ``--print-config`` (pretrain, evaluate linear / knn, semisup finetune,
detection train), it is then run for real with ``--print-config``, which resolves every ``key=value``
(or Detectron2 ``KEY VALUE``) override against the config and exits: a renamed key fails. A
``make <target> VAR=...`` line must name a target and variables the Makefile has; the ``python -m``
commands its recipe runs are checked the same way.

Files that earlier commands write (a checkpoint, a Detectron2 pickle) need not exist: parsing does not
open them, and ``--print-config`` reads no checkpoint (detection's ``--weights`` is replaced by
``none`` where the file is absent, as only the config is checked).

Blocks marked ```bash smoke form the README's smoke path; ``LOWSSL_README_SMOKE=1`` also runs them
for real, in order, in a scratch copy of the working tree (:func:`test_the_smoke_path_runs`).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
DOCUMENTS = ("README.md", *sorted(p.relative_to(REPO).as_posix() for p in (REPO / "docs").glob("*.md")))
SHELL_LANGUAGES = {"bash", "sh", "shell"}
FENCE = re.compile(r"^```(?P<info>[^\n]*)\n(?P<body>.*?)^```", re.MULTILINE | re.DOTALL)
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
# A placeholder the reader fills in (CKPT, SUBJECT, P, a|b alternatives, [optional] parts): such a
# line documents a pattern, not a command. README.md must have none (test_the_readme_has_no_placeholder).
PLACEHOLDER = re.compile(r"^[A-Z][A-Z_]*$|\||^\[.*\]$|^\.\.\.$")
# Commands that would need what a test cannot have or must not do.
NOT_RUN_HERE = {"install": "it installs into the shared .venv", "clean-venv": "it deletes the .venv"}


@dataclass
class Command:
    document: str
    line: int
    text: str
    words: list[str]
    smoke: bool
    env: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.document}:{self.line}: {self.text}"


def shell_blocks(document: str):
    """(first line number, info string, body) of each fenced shell block of ``document``."""
    text = (REPO / document).read_text(encoding="utf-8")
    for match in FENCE.finditer(text):
        info = match.group("info").split()
        if info and info[0] in SHELL_LANGUAGES:
            yield text.count("\n", 0, match.start("body")) + 1, info[1:], match.group("body")


def commands(document: str) -> list[Command]:
    found = []
    for first_line, flags, body in shell_blocks(document):
        # Join continuation lines, keeping the number of the line a command starts on.
        logical, start = "", None
        for number, line in enumerate(body.splitlines(), first_line):
            start = number if start is None else start
            if line.rstrip().endswith("\\"):
                logical += line.rstrip()[:-1] + " "
                continue
            logical += line
            words = shlex.split(logical, comments=True)
            env = {}
            while words and (ASSIGNMENT.match(words[0]) or words[0] in ("time", "export")):
                if "=" in words[0]:
                    name, _, value = words[0].partition("=")
                    env[name] = value
                words = words[1:]
            if words:  # an `export` line sets variables only
                found.append(Command(document, start, logical.strip(), words, "smoke" in flags, env))
            logical, start = "", None
    return found


def module_command(words: list[str]) -> tuple[str, list[str]] | None:
    """(module, its argv) of a line that runs ``python -m``, through torchrun or srun; else None."""
    for index, word in enumerate(words):
        program = Path(word).name
        launcher = program == "torchrun" or (index == 0 and program == "srun")
        if (re.fullmatch(r"python(3(\.\d+)?)?", program) or launcher) and "-m" in words[index:]:
            at = words.index("-m", index)
            if launcher or at == index + 1:
                return words[at + 1], words[at + 2 :]
    return None


def is_lowssl_module(module: str) -> bool:
    top = module.split(".")[0]
    return (REPO / top).is_dir() and (REPO / top / "__init__.py").is_file()


def takes_arguments(module: str) -> bool:
    """Whether ``python -m module`` parses a command line with argparse (in its own file or in the
    ``main`` it imports): a module that does not would run for real under :func:`parse`."""
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin, f"no module {module}"
    path = Path(spec.origin)
    source = (path.parent / "__main__.py" if path.name == "__init__.py" else path).read_text(encoding="utf-8")
    if "argparse" in source or "StageParser" in source:  # lowssl.cli.StageParser is argparse's
        return True
    imported = re.search(r"^from ([\w.]+) import main$", source, re.MULTILINE)
    return imported is not None and takes_arguments(imported.group(1))


class _Parsed(Exception):
    def __init__(self, namespace: argparse.Namespace):
        self.namespace = namespace


def run_module(module: str, argv: list[str], monkeypatch) -> int:
    """``python -m module *argv`` in this process; its exit code."""
    monkeypatch.setattr(sys, "argv", [module, *argv])
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as stop:
        return 0 if stop.code is None else stop.code if isinstance(stop.code, int) else 1
    return 0


# Every way a CLI may parse its command line; the outermost call (a subcommand's parser is called
# from inside its parent's) is where parsing has ended.
PARSE_METHODS = ("parse_args", "parse_known_args", "parse_intermixed_args", "parse_known_intermixed_args")


def option_strings(parser: argparse.ArgumentParser) -> set[str]:
    """Every flag ``parser`` and its subcommands' parsers define."""
    found = set()
    for action in parser._actions:
        found |= set(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                found |= option_strings(subparser)
    return found


def flags_given(argv) -> list[str]:
    """The ``--flag`` words of a command line, up to a lone ``--`` (what follows is another command's)."""
    words = list(sys.argv[1:] if argv is None else argv)
    words = words[: words.index("--")] if "--" in words else words
    return [word.partition("=")[0] for word in words if word.startswith("--")]


def parse(module: str, argv: list[str], monkeypatch, capsys) -> argparse.Namespace:
    """The namespace ``python -m module *argv`` parses to; fails with its error where it does not."""
    depth = 0

    def stop_after_parsing(original):
        def parse_and_stop(self, *args, **kwargs):
            nonlocal depth
            depth += 1
            try:
                result = original(self, *args, **kwargs)
            finally:
                depth -= 1
            if depth == 0:
                abbreviated = set(flags_given(args[0] if args else kwargs.get("args"))) - option_strings(self)
                if abbreviated:  # argparse takes a prefix of a flag: a renamed flag would still parse
                    pytest.fail(
                        f"python -m {module}: {sorted(abbreviated)} not spelled as the CLI spells them"
                    )
                raise _Parsed(result[0] if isinstance(result, tuple) else result)
            return result

        return parse_and_stop

    with monkeypatch.context() as patch:
        for name in PARSE_METHODS:
            patch.setattr(
                argparse.ArgumentParser, name, stop_after_parsing(getattr(argparse.ArgumentParser, name))
            )
        try:
            code = run_module(module, argv, patch)
        except _Parsed as parsed:
            return parsed.namespace
    error = capsys.readouterr().err.strip().splitlines()
    pytest.fail(f"python -m {module} {shlex.join(argv)}: exit {code} before parsing ended: {error[-1:]}")


def with_print_config(module: str, argv: list[str], namespace: argparse.Namespace) -> list[str]:
    """``argv`` with ``--print-config`` before its first flag (Detectron2's KEY VALUE pairs are a
    REMAINDER after the flags). For detection, an absent ``--weights`` file is replaced by ``none``:
    only the config and its keys are checked."""
    argv = list(argv)
    if module == "lowssl.detection" and getattr(namespace, "weights", "none") != "none":
        weights = Path(namespace.weights)
        if not (weights if weights.is_absolute() else REPO / weights).exists():
            argv[argv.index("--weights") + 1] = "none"
    first_flag = next((i for i, word in enumerate(argv) if word.startswith("-")), len(argv))
    return [*argv[:first_flag], "--print-config", *argv[first_flag:]]


def check_module(module: str, argv: list[str], monkeypatch, capsys) -> None:
    if not takes_arguments(module):
        assert not argv, f"python -m {module} takes no arguments, given {argv}"
        return
    namespace = parse(module, argv, monkeypatch, capsys)
    if module == "lowssl.submit":  # its job is another stage's command line: check that one too
        check_module(f"lowssl.{namespace.stage}", namespace.stage_args, monkeypatch, capsys)
        return
    if hasattr(namespace, "print_config") and "--help" not in argv:
        resolved = with_print_config(module, argv, namespace)
        with monkeypatch.context() as patch:
            # `detection train` refuses a cuda config on a machine without CUDA, even to print it:
            # the config is checked as a GPU machine reads it.
            patch.setattr(torch.cuda, "is_available", lambda: True)
            code = run_module(module, resolved, patch)
        if code != 0:
            error = capsys.readouterr().err.strip().splitlines()
            pytest.fail(f"python -m {module} {shlex.join(resolved)}: exit {code}: {error[-1:]}")


def makefile_variables() -> set[str]:
    text = (REPO / "Makefile").read_text(encoding="utf-8")
    return set(re.findall(r"\$\$\{?([A-Z][A-Z0-9_]*)", text)) | set(
        re.findall(r"\$\(([A-Z][A-Z0-9_]*)\)", text)
    )


def make_module_commands(target: str, assignments: list[str], tmp_path: Path) -> list[tuple[str, list[str]]]:
    """The ``python -m`` commands the recipe of ``target`` runs, with the shell's expansions done: the
    recipe runs for real with ``PY`` replaced by a program that only logs its arguments (when every
    line of it is ``$(PY) ...`` or a ``test``; otherwise nothing is run and nothing is returned)."""
    dry = subprocess.run(
        ["make", "-n", "-o", "install", target, *assignments], cwd=REPO, capture_output=True, text=True
    )
    assert dry.returncode == 0, f"make {target}: {dry.stderr.strip()}"
    logger, log = tmp_path / "argv-logger", tmp_path / "argv.jsonl"
    logger.write_text(
        f"#!{sys.executable}\nimport json, os, sys\n"
        "with open(os.environ['ARGV_LOG'], 'a') as f:\n    f.write(json.dumps(sys.argv[1:]) + '\\n')\n"
    )
    logger.chmod(0o755)
    lines = [line for line in dry.stdout.splitlines() if line.strip()]
    safe = all(line.startswith((".venv/bin/python ", "test -n")) for line in lines)
    if not lines or not safe:
        return []
    run = subprocess.run(
        ["make", "-s", "-o", "install", target, f"PY={logger}", *assignments],
        cwd=REPO,
        env={**os.environ, "ARGV_LOG": str(log)},
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, f"make {target}: {run.stderr.strip()}"
    found = []
    for entry in log.read_text().splitlines() if log.exists() else []:
        argv = json.loads(entry)
        if argv[:1] == ["-m"]:
            found.append((argv[1], argv[2:]))
    return found


def check_make(command: Command, monkeypatch, capsys, tmp_path: Path) -> None:
    target, *assignments = command.words[1:]
    unknown = {a.partition("=")[0] for a in assignments} - makefile_variables()
    assert "=" not in target and not unknown, f"{command}: the Makefile reads no {sorted(unknown)}"
    if target in NOT_RUN_HERE:
        assert target in (REPO / "Makefile").read_text(), f"{command}: no target {target}"
        return
    for module, argv in make_module_commands(target, assignments, tmp_path):
        if is_lowssl_module(module):
            check_module(module, argv, monkeypatch, capsys)


def is_checkable(command: Command) -> bool:
    """A ``make`` line or a lowssl module's command line, without placeholders."""
    if any(PLACEHOLDER.search(word) for word in command.words):
        return False
    module = module_command(command.words)
    return command.words[0] == "make" or (module is not None and is_lowssl_module(module[0]))


def checkable(document: str) -> list[Command]:
    return [command for command in commands(document) if is_checkable(command)]


ALL = [command for document in DOCUMENTS for command in checkable(document)]


def test_the_readme_has_commands_and_no_placeholder():
    """Every shell line of the README is a command this file checks: none is skipped as a pattern."""
    readme = commands("README.md")
    skipped = [str(c) for c in readme if not is_checkable(c)]
    assert len(readme) >= 20, "the README's commands were not found: is the fence syntax still ```bash?"
    assert not skipped, "README lines this test cannot check (placeholders, unknown programs):\n" + "\n".join(
        skipped
    )


@pytest.mark.parametrize("command", ALL, ids=[f"{c.document}:{c.line}" for c in ALL])
def test_the_command_exists_with_its_flags_and_keys(command: Command, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("LOWSSL_HOME", str(tmp_path))  # had a command run for real, its records land here
    for name, value in command.env.items():
        monkeypatch.setenv(name, value)
    if command.words[0] == "make":
        check_make(command, monkeypatch, capsys, tmp_path)
        return
    check_module(*module_command(command.words), monkeypatch, capsys)


def test_a_renamed_key_or_flag_fails_the_check(monkeypatch, capsys, tmp_path):
    """The check is not a formality: the Data table's old keys, a removed flag and a Detectron2 key
    that does not exist each fail it."""
    monkeypatch.chdir(REPO)
    config = "pretrain/configs/tiny/dino_resnet18_ours.yaml"
    for module, argv in [
        ("lowssl.pretrain", ["--config", config, "dataset=imagefolder", "data_root=/path/to/imagenet"]),
        (
            "lowssl.evaluate",
            ["linear", "--checkpoint", "x.pth", "--protocol", "fast_tiny", "--train-subsett", "9"],
        ),
        (
            "lowssl.evaluate",
            ["linear", "--checkpoint", "x.pth", "--protocol", "fast_tiny", "--train-sub", "9"],
        ),
        (
            "lowssl.semisup",
            ["finetune", "--random-init", "--arch", "resnet18", "--subset", "1pct", "epochz=1"],
        ),
        (
            "lowssl.detection",
            ["train", "--config", "detection/configs/mask_rcnn_resnet18_fpn_tiny.yaml"]
            + ["--weights", "none", "SOLVER.MAX_ITERS", "10"],
        ),
    ]:
        with pytest.raises(pytest.fail.Exception):
            check_module(module, argv, monkeypatch, capsys)
    with pytest.raises(AssertionError, match="reads no"):
        check_make(Command("x", 1, "", ["make", "figures", "SEED=3"], False), monkeypatch, capsys, tmp_path)


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("LOWSSL_README_SMOKE") != "1", reason="set LOWSSL_README_SMOKE=1 (a few minutes)"
)
def test_the_smoke_path_runs(tmp_path):
    """The README's smoke path, run as written, in order, in a scratch copy of the tree (its runs/ and
    results/runs/ stay untouched). ``make`` is given ``-o install``: a test must not reinstall the
    shared .venv (an editable install from the scratch copy would point it there)."""
    work = tmp_path / "work"
    work.mkdir()
    for entry in REPO.iterdir():
        if entry.name not in ("runs", "results", ".git"):
            (work / entry.name).symlink_to(entry)
    (work / "results").mkdir()
    for entry in (REPO / "results").iterdir():
        if entry.name not in ("runs", "leaderboard.csv"):
            (work / "results" / entry.name).symlink_to(entry)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    make = bin_dir / "make"
    make.write_text(f'#!/bin/sh\nexec {shutil.which("make")} -o install "$@"\n')
    make.chmod(0o755)
    blocks = [body for _, flags, body in shell_blocks("README.md") if "smoke" in flags]
    script = "set -euxo pipefail\n" + "\n".join(blocks)
    result = subprocess.run(
        ["bash", "-c", script],
        cwd=work,
        env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert (work / "runs" / "smoke" / "pretrain" / "last.pth").is_file()
