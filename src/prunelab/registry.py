"""All extension points of prunelab, one registry each, found by discovery.

A registry maps a config name (the ``name`` field of a config group option) to what
implements it. Unknown names fail with a did-you-mean message listing what is available, and
a name that is taken is refused, so plugins cannot shadow built-ins silently.

Registries sit at the bottom of the import layers (config validation reads them), so they
never import what they hold: each names the module that registers its entries and imports it
on first use. With ``per_module`` every module of that package is one entry named after the
module (``prunelab/methods/flap.py`` is ``method=flap``), so names are listed without importing
any of them (only the package itself) and adding a method is adding its file. An entry point
group lets a package outside prunelab add entries
(``[project.entry-points."prunelab.methods"] mine = "pkg.mod:Class"``).
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Callable, Iterator
from importlib import metadata
from typing import Any, Generic, TypeVar

from prunelab.errors import PrunelabError, unknown_name_message

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> implementation table for one extension point."""

    def __init__(self, kind: str, description: str, discover: str | None = None,
                 per_module: bool = False, entry_point_group: str | None = None,
                 base_cls: type | None = None):
        self.kind = kind
        self.description = description
        self.base_cls = base_cls
        self._discover = discover
        self._per_module = per_module
        self._entry_point_group = entry_point_group
        self._entries: dict[str, T] = {}
        self._imported = discover is None

    def register(self, *names: str) -> Callable[[T], T]:
        """Decorator registering a class (or any object) under each of ``names``."""

        def decorator(entry: T) -> T:
            for name in names:
                self.add(name, entry)
            return entry

        return decorator

    def add(self, name: str, entry: T) -> None:
        """Register ``entry`` as ``name``; refuse a taken name or a wrong base class."""
        if self.base_cls is not None and not (isinstance(entry, type)
                                              and issubclass(entry, self.base_cls)):
            raise TypeError(f"{entry!r} must subclass {self.base_cls.__name__}")
        taken = name in self._entries and self._entries[name] is not entry
        if self._per_module and name in self._module_names:
            taken |= getattr(entry, "__module__", None) != f"{self._discover}.{name}"
        if taken:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry

    def get(self, name: str) -> T:
        """The entry registered as ``name`` (importing its module) or a did-you-mean error."""
        if name not in self._entries:
            if name not in self.names():
                raise PrunelabError(unknown_name_message(self.kind, name, self.names()))
            self._load(name)
        if name not in self._entries:
            raise RuntimeError(f"{self._discover}.{name} was imported but registered no "
                               f"{self.kind} named {name!r}")
        return self._entries[name]

    def names(self) -> list[str]:
        """Every available name, sorted (per-module registries import nothing for this)."""
        if self._per_module:
            return sorted(set(self._entries) | set(self._module_names)
                          | set(self._entry_points))
        self._import_all()
        return sorted(self._entries)

    def load_all(self) -> dict[str, T]:
        """Every entry, each module imported."""
        return {name: self.get(name) for name in self.names()}

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.names()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def _load(self, name: str) -> None:
        points = self._entry_points
        if name in points:
            self.add(name, points[name].load())
        elif self._per_module:
            importlib.import_module(f"{self._discover}.{name}")
        else:
            self._import_all()

    def _import_all(self) -> None:
        if self._imported:
            return
        self._imported = True
        importlib.import_module(self._discover)
        for name, point in self._entry_points.items():
            self.add(name, point.load())

    @functools.cached_property
    def _module_names(self) -> list[str]:
        package = importlib.import_module(self._discover)  # its __init__, not its modules
        return [m.name for m in pkgutil.iter_modules(package.__path__)
                if not m.name.startswith("_")]

    @functools.cached_property
    def _entry_points(self) -> dict[str, Any]:
        if self._entry_point_group is None:
            return {}
        return {p.name: p for p in metadata.entry_points(group=self._entry_point_group)}


METHODS: Registry[Any] = Registry(
    "method", "config method.name -> PruningMethod subclass (its Params: the method schema); "
    "one module of prunelab/methods each, or a 'prunelab.methods' entry point",
    discover="prunelab.methods", per_module=True, entry_point_group="prunelab.methods")
SCHEDULES: Registry[Any] = Registry(
    "schedule", "config schedule.name -> Schedule subclass (its Params: the schedule schema)",
    discover="prunelab.schedules", entry_point_group="prunelab.schedules")
ZERO_SHOT_TASKS: Registry[Any] = Registry(
    "zero-shot task", "benchmark.zero_shot.tasks entries -> ZeroShotTask (eval/zeroshot_tasks)",
    discover="prunelab.eval.zeroshot_tasks")
