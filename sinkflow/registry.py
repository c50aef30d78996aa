"""One registry pattern for every kind of extension: families, strategies, detectors, analyses, benchmarks.

A registry maps a name to what it names (a class, or a task object). Entries register themselves where they are
defined, so adding one is adding its module: a base class passes `name=` through `__init_subclass__`

    class SinkFront(SinkStrategy, name="sink_front"): ...

and a module-level entry calls `REGISTRY.register(name, obj)`. The registry imports every module of its package
the first time it is read, so nothing lists the entries by hand (docs/architecture.md#registries).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownName(KeyError, ValueError):
    """A name no entry is registered under (a KeyError for lookups, a ValueError for config checks)."""

    def __str__(self) -> str:
        return str(self.args[0])


class Registry(Generic[T]):
    """Name -> entry of one `kind`, discovered by importing every module under the `packages` (none: entries come
    from `register` alone)."""

    def __init__(self, kind: str, *packages: str):
        self.kind = kind
        self.packages = packages
        self._entries: dict[str, T] = {}
        self._discovered = False

    def register(self, name: str, entry: T) -> T:
        """Add `entry` under `name` (a name registered twice is an error: the second would silently win)."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} needs a non-empty name, got {name!r}")
        if name in self._entries and self._entries[name] is not entry:
            raise ValueError(f"{self.kind} name {name!r} is already registered by {self._entries[name]!r}")
        self._entries[name] = entry
        return entry

    def discover(self) -> None:
        """Import every module under the registry's packages (their entries register on import)."""
        if self._discovered:
            return
        self._discovered = True
        for package_name in self.packages:
            package = importlib.import_module(package_name)
            for info in pkgutil.walk_packages(package.__path__, prefix=f"{package_name}."):
                importlib.import_module(info.name)

    def __getitem__(self, name: str) -> T:
        self.discover()
        if name not in self._entries:
            raise UnknownName(f"unknown {self.kind} {name!r}; available: {sorted(self._entries)}")
        return self._entries[name]

    def get(self, name: str, default: T | None = None) -> T | None:
        self.discover()
        return self._entries.get(name, default)

    def __contains__(self, name: object) -> bool:
        self.discover()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        self.discover()
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        self.discover()
        return len(self._entries)

    def names(self) -> list[str]:
        return list(self)

    def items(self) -> list[tuple[str, T]]:
        return [(name, self._entries[name]) for name in self]

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {', '.join(self.packages)})"
