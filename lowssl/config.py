"""Typed, strict configs: dataclasses filled from YAML, with composition and dotted overrides.

A config is a (nested) dataclass. :func:`load` reads a YAML file, follows its ``_base_`` chain
(a path, or a list of paths merged in order, relative to the file; the child's keys override the
base's, recursively), applies
``key.sub=value`` overrides and builds the dataclass. Anything that does not fit is a
:class:`ConfigError` naming the dotted key and what is allowed:

- an unknown or misspelt key (with the closest known key as a suggestion);
- a value of the wrong type (``int``, ``float``, ``bool``, ``str``, tuples, lists, ``Literal``
  choices and ``Optional`` are checked);
- a value a dataclass's ``__post_init__`` rejects (raise :class:`ConfigError` there via
  :func:`require`).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from lowssl.errors import BadInput

T = TypeVar("T")
BASE_KEY = "_base_"


class ConfigError(BadInput, ValueError):
    """A config value or key is invalid; the message names the key and the allowed values."""


def require(condition: bool, key: str, message: str) -> None:
    """Raise :class:`ConfigError` for ``key`` unless ``condition`` holds (use in ``__post_init__``)."""
    if not condition:
        raise ConfigError(f"config key '{key}': {message}")


def _suggest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return f"{hint} Known keys: {', '.join(sorted(known))}."


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check ``value`` against ``annotation`` and convert YAML lists to tuples where declared."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping, got {value!r}")
        return from_dict(annotation, value, prefix=key)
    if origin is Literal:
        if value not in args:
            allowed = ", ".join(repr(a) for a in args)
            raise ConfigError(f"config key '{key}': {value!r} is not allowed; allowed values: {allowed}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option, key)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(
            errors[0] if len(errors) == 1 else f"config key '{key}': {value!r} fits none of {args}"
        )
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"config key '{key}': expected a list of {len(args)} values, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"config key '{key}': expected {len(args)} values, got {len(value)}: {value!r}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)] if args else list(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping, got {value!r}")
        return dict(value)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}': expected true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-6 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{key}': expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types are errors."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        name = unknown[0]
        raise ConfigError(f"unknown config key '{_join(prefix, name)}'.{_suggest(name, list(fields))}")
    kwargs = {name: _coerce(value, hints[name], _join(prefix, name)) for name, value in data.items()}
    missing = [
        n
        for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"config key '{_join(prefix, missing[0])}' is required and has no default")
    try:
        return cls(**kwargs)
    except ConfigError as error:
        if prefix and "config key '" in str(error):
            raise ConfigError(str(error).replace("config key '", f"config key '{prefix}.", 1)) from None
        raise


def to_dict(config: Any) -> Any:
    """Plain data (dicts, lists, numbers, strings) for saving inside checkpoints and records."""
    if dataclasses.is_dataclass(config):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, list | tuple):
        return [to_dict(v) for v in config]
    if isinstance(config, dict):
        return {k: to_dict(v) for k, v in config.items()}
    return config


def config_hash(config: Any) -> str:
    """Short, stable hash of a config's plain data (key order does not matter)."""
    payload = json.dumps(to_dict(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _merge(base: dict, child: dict) -> dict:
    merged = dict(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def yaml_file_error(error: yaml.YAMLError, path: str | Path) -> ConfigError:
    """One line for a config file that yaml.safe_load refuses, naming the file (the one of a base chain
    that holds the problem: the error's mark says which), the line and the fix.

    Config files are read as plain YAML only: a Python tag (``!!python/object/apply:os.system``)
    asks the loader to build an object, that is, to run code named by a file from elsewhere, so
    safe_load refuses it and so does every config reader of lowssl (never yaml.unsafe_load).
    """
    mark = getattr(error, "problem_mark", None)
    if mark is None:  # not a parse error: the text itself (bytes that are not UTF-8, a NUL ...)
        file = getattr(error, "name", None) or path  # a ReaderError names its stream
        return ConfigError(f"config file {file}: not readable as YAML: {' '.join(str(error).split())}")
    where = f"config file {mark.name}, line {mark.line + 1}"
    if isinstance(error, yaml.constructor.ConstructorError):
        return ConfigError(
            f"{where}: {error.problem}; config files are read as plain YAML, never as Python objects "
            "(building one would run code from the file): remove the tag"
        )
    return ConfigError(f"{where}: {error.problem}; fix the YAML syntax")


def read_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML mapping, resolving its ``_base_`` chain."""
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError(f"config file {path}: '_base_' chain loops back to itself")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    with path.open("rb") as stream:  # a stream, so a YAML error's mark names this file of the chain
        try:
            data = yaml.safe_load(stream) or {}
        except yaml.YAMLError as error:
            raise yaml_file_error(error, path) from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping at the top level")
    bases = data.pop(BASE_KEY, None) or []
    merged: dict[str, Any] = {}
    for base in [bases] if isinstance(bases, str) else bases:
        merged = _merge(merged, read_yaml(path.parent / base, (*_seen, path)))
    return _merge(merged, data)


def add_overrides_argument(parser: argparse.ArgumentParser, help: str) -> None:
    """The ``key.sub=value ...`` arguments of every stage's command line (pretrain, evaluate, semisup):
    one syntax, read by :func:`parse_overrides` / :func:`apply_overrides`."""
    parser.add_argument("overrides", nargs="*", metavar="key=value", help=help)


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``a.b.c=value`` overrides as ``{"a.b.c": value}``; values are parsed as YAML (``1e-3``,
    ``[0.3, 1.0]``, ``true``); a key given twice keeps its last value."""
    parsed: dict[str, Any] = {}
    for override in overrides:
        if "=" not in override:
            raise ConfigError(f"override '{override}' must look like key.sub=value")
        dotted, raw = override.split("=", 1)
        try:
            parsed[dotted.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError as error:
            problem = getattr(error, "problem", None) or " ".join(str(error).split())
            raise ConfigError(
                f"override '{override}': {problem}; a value is plain YAML (a number, string, list or "
                "true/false), never a tagged Python object"
            ) from None
    return parsed


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``data`` with the ``a.b.c=value`` overrides of :func:`parse_overrides` applied."""
    data = _merge({}, data)
    for dotted, value in parse_overrides(overrides).items():
        node = data
        parts = dotted.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{dotted}': '{part}' is not a section")
        node[parts[-1]] = value
    return data


def load(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Build ``cls`` from a YAML file (optional) and dotted overrides."""
    data = read_yaml(path) if path is not None else {}
    return from_dict(cls, apply_overrides(data, overrides or []))


def changed_values(base: Any, changed: Any, prefix: str = "") -> dict[str, Any]:
    """The dotted keys whose values differ between two configs (dataclasses or nested mappings),
    with the values of ``changed``; an override that repeats a config's own value changes nothing."""
    base, changed = to_dict(base), to_dict(changed)
    if not (isinstance(base, dict) and isinstance(changed, dict)):
        return {} if base == changed else {prefix: changed}
    differences: dict[str, Any] = {}
    for key in sorted(set(base) | set(changed)):
        differences.update(changed_values(base.get(key), changed.get(key), _join(prefix, key)))
    return differences


def derived_name(name: str, changes: dict[str, Any]) -> str:
    """The name a run of protocol ``name`` with ``changes`` is recorded under: never the protocol's own
    name, so it is never grouped with the protocol's rows (``sslight+batch_size=16+epochs=1``)."""
    return name + "".join(
        f"+{key}={json.dumps(value, separators=(',', ':'))}" for key, value in sorted(changes.items())
    )
