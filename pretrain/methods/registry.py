"""The method registry: one entry per pre-training method, keyed by the config's ``method.name``.

timm-style (``register_model`` / ``list_models``): :func:`register_method` adds a method class (it
carries its ``name`` and ``config_class``), :func:`methods` lists the names, :func:`get_method` finds
one (with a did-you-mean error) and :func:`method_name` maps a method config back to its name. The
config loader, the training loop and the test-suite all read this one table, so a new method is one
module plus one ``register_method`` line in ``pretrain/methods/__init__.py`` (docs/extending.md).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from lowssl.registry import Registry

from .base import MultiCropMethod


@dataclass(frozen=True)
class MethodEntry:
    name: str
    method_class: type[MultiCropMethod]
    config_class: type
    # Config values for the smallest heads and queues that still run every code path: the sizes the
    # test-suite trains each registered method with (tests/test_methods.py, tests/test_pretrain_engine.py).
    smoke_values: dict[str, Any]

    def smoke_config(self, **changes: Any):
        """The method's default config at :attr:`smoke_values`, with ``changes`` on top."""
        return self.config_class(**{**self.smoke_values, **changes})


METHODS: Registry[MethodEntry] = Registry("method", where="config key 'method.name'")


def register_method(method_class: type[MultiCropMethod], smoke_values: dict[str, Any]) -> MethodEntry:
    """Register ``method_class`` under its ``name``; ``smoke_values`` see :class:`MethodEntry`."""
    name, config_class = method_class.name, method_class.config_class
    if not dataclasses.is_dataclass(config_class):
        raise TypeError(f"method '{name}': config_class {config_class.__name__} is not a dataclass")
    entry = MethodEntry(name, method_class, config_class, dict(smoke_values))
    entry.smoke_config()  # a smoke value the config rejects fails at registration, not in a test
    return METHODS.register(name, entry)


def unregister_method(name: str) -> None:
    """Remove ``name`` (a test's throwaway registration)."""
    METHODS.unregister(name)


def methods() -> list[str]:
    return METHODS.names()


def get_method(name: str) -> MethodEntry:
    return METHODS.get(name)


def method_name(config: Any) -> str:
    """The registered name of the method whose config ``config`` is."""
    for _, entry in METHODS.items():
        if type(config) is entry.config_class:  # exact: a subclassed config is another method's
            return entry.name
    raise TypeError(
        f"{type(config).__name__} is not the config of a registered method ({', '.join(methods())})"
    )
