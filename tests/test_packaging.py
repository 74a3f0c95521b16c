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
