"""One registry type for everything lowssl finds by name: backbones, methods, checkpoint formats,
datasets and evaluation kinds (timm's ``register_model`` / Detectron2's ``Registry`` in one small class).

Every lookup of an unknown name raises the same :class:`UnknownName` error (a :class:`ConfigError`, so
bad input: exit 2), naming what was looked up, the closest registered name and all of them::

    unknown dataset 'fasion-mnist'. Did you mean 'fashion-mnist'? Allowed values: fashion-mnist, ...
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from typing import Generic, TypeVar

from lowssl.config import ConfigError

T = TypeVar("T")


class UnknownName(ConfigError, KeyError):
    """A name that no entry of a registry has. (A KeyError too: lookups that caught one still do.)"""

    def __str__(self) -> str:  # KeyError's own quotes the message
        return str(self.args[0])


class Registry(Generic[T]):
    """Entries of one ``kind`` ("backbone", "dataset", ...) by name, in registration order."""

    def __init__(self, kind: str, where: str = "") -> None:
        self.kind = kind
        self.where = where  # how the name is given, for the error: e.g. "config key 'method.name'"
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} '{name}' is already registered")
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> None:
        """Remove ``name`` (a test's throwaway registration, tests/test_extending.py)."""
        del self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise UnknownName(self.unknown(name))
        return self._entries[name]

    def unknown(self, name: object) -> str:
        """The message for a name that is not registered (did-you-mean, then every allowed value)."""
        close = difflib.get_close_matches(str(name), self.names(), n=1)  # difflib's cutoff: 0.6
        hint = f" Did you mean '{close[0]}'?" if close else ""
        where = f"{self.where}: " if self.where else ""
        return f"{where}unknown {self.kind} '{name}'.{hint} Allowed values: {', '.join(self.names())}"

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def items(self):
        return self._entries.items()
