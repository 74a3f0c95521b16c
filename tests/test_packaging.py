"""pyproject.toml's ranges, constraints.txt's pins and the console scripts agree with each other and
with the installed lowssl (``make install`` installs it editable, so its metadata is this checkout's)."""

from __future__ import annotations

import importlib
import importlib.metadata
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
SCRIPTS = PROJECT["scripts"]


def _declared() -> list[Requirement]:
    extras = PROJECT["optional-dependencies"].values()
    return [Requirement(line) for line in [*PROJECT["dependencies"], *(r for extra in extras for r in extra)]]


def _pins() -> dict[str, str]:
    """constraints.txt as {canonical name: version}; every line there is ``name==version``."""
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin (name==version)"
            pins[canonicalize_name(name)] = version
    return pins


def test_every_dependency_is_a_range_with_a_pin_inside_it():
    pins = _pins()
    for requirement in _declared():
        name = canonicalize_name(requirement.name)
        assert not any(s.operator in ("==", "===") for s in requirement.specifier), (
            f"{requirement} is pinned in pyproject.toml: pins belong in constraints.txt"
        )
        assert name in pins, f"{requirement.name} has no tested version in constraints.txt"
        assert requirement.specifier.contains(pins[name]), (
            f"constraints.txt pins {name}=={pins[name]}, outside pyproject.toml's {requirement}"
        )
    assert set(pins) == {canonicalize_name(r.name) for r in _declared()}, "a pin for nothing declared"


def test_installed_metadata_is_this_checkouts():
    # A stale install (pyproject.toml edited since) would hide a missing console script: reinstall.
    wanted = {str(Requirement(line)) for line in PROJECT["dependencies"]}
    for extra, group in PROJECT["optional-dependencies"].items():
        wanted |= {str(Requirement(f'{line}; extra == "{extra}"')) for line in group}
    installed = {str(Requirement(line)) for line in importlib.metadata.requires("lowssl") or []}
    assert installed == wanted, "lowssl's installed metadata is not this pyproject.toml's: run `make install`"


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_console_script_resolves_to_a_main(name):
    installed = {ep.name: ep for ep in importlib.metadata.entry_points(group="console_scripts")}
    assert name in installed, f"console script {name} is not installed: run `make install`"
    assert installed[name].value == SCRIPTS[name]
    # Loading imports the module: a __main__ that did its work at import time would exit here.
    module, _, attribute = SCRIPTS[name].partition(":")
    main = getattr(importlib.import_module(module), attribute)
    assert callable(main) and installed[name].load() is main


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_console_script_help_exits_zero(name, capsys):
    main = importlib.metadata.entry_points(group="console_scripts")[name].load()
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0 and "usage:" in capsys.readouterr().out


STAGE_FOLDERS = ("pretrain", "evaluate", "semisup", "detection", "results", "benchmarks")
# Top-level names the field's own tools install (Hugging Face's `evaluate`) or a user's project may
# hold; lowssl must import and run beside every one of them.
FOREIGN = (*STAGE_FOLDERS, "tests")


def test_every_stage_folder_is_installed_under_lowssl_and_none_is_missing():
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["package-dir"] == {"lowssl": "lowssl", **{f"lowssl.{s}": s for s in STAGE_FOLDERS}}
    holding_files = {
        ".".join(folder.relative_to(REPO).parts)
        for top in ("lowssl", *STAGE_FOLDERS)
        for folder in [REPO / top, *(REPO / top).rglob("*")]
        if folder.is_dir()
        and "__pycache__" not in folder.parts
        and any(f.suffix in (".py", ".yaml", ".csv", ".md") for f in folder.iterdir())
    }
    wanted = {name if name.startswith("lowssl") else f"lowssl.{name}" for name in holding_files}
    assert set(setuptools["packages"]) == wanted, "pyproject.toml's [tool.setuptools] packages"


def test_no_module_imports_a_stage_by_a_generic_top_level_name():
    """Inside lowssl a stage is ``lowssl.evaluate``, never ``evaluate`` (which may be Hugging Face's)."""
    import ast

    offenders = []
    for path in REPO.glob("*/**/*.py"):
        if ".venv" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom) and node.level == 0
                else [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            offenders += [f"{path}:{node.lineno}: {n}" for n in names if n.split(".")[0] in STAGE_FOLDERS]
    assert not offenders, "\n".join(offenders)


def test_lowssl_runs_beside_foreign_packages_of_the_same_names(tmp_path):
    """A real process, outside the checkout, with a foreign ``evaluate``, ``results``, ``detection``...
    first on the path (as Hugging Face's ``evaluate`` is in any ``transformers`` environment): every
    console script and ``python -m lowssl.<stage>`` still runs lowssl's, and ``import evaluate`` is
    still the foreign one."""
    import os
    import shutil
    import subprocess
    import sys

    site = tmp_path / "site"
    for name in FOREIGN:
        (site / name).mkdir(parents=True)
        (site / name / "__init__.py").write_text(f"FOREIGN = {name!r}\n")
        (site / name / "__main__.py").write_text("raise SystemExit('the foreign package ran')\n")
    env = {**os.environ, "PYTHONPATH": str(site)}
    probe = "; ".join(f"import {n}; assert {n}.FOREIGN == {n!r}, {n}.__file__" for n in FOREIGN)
    probe += "; import lowssl.evaluate.__main__, lowssl.results.__main__, lowssl.detection.config"
    commands = [[sys.executable, "-c", probe]]
    commands += [[shutil.which(name, path=Path(sys.executable).parent) or name, "--help"] for name in SCRIPTS]
    commands += [[sys.executable, "-m", f"lowssl.{stage}", "--help"] for stage in STAGE_FOLDERS[:5]]
    for command in commands:
        result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0 and "foreign" not in result.stderr, (command, result.stderr[-2000:])
