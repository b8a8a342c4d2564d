"""All extension points of prunelab, one registry each.

A registry maps a config name (the ``name`` field of a config group option) to a class.
Unknown names fail with a did-you-mean message listing what is available, and a class
registered under a name that is taken is refused, so plugins cannot shadow built-ins silently.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from prunelab.errors import PrunelabError, unknown_name_message

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> class table for one extension point."""

    def __init__(self, kind: str, base_cls: type, description: str):
        self.kind = kind
        self.base_cls = base_cls
        self.description = description
        self._entries: dict[str, type[T]] = {}

    def register(self, *names: str) -> Callable[[type[T]], type[T]]:
        """Class decorator registering ``cls`` under each of ``names``."""

        def decorator(cls: type[T]) -> type[T]:
            if not issubclass(cls, self.base_cls):
                raise TypeError(f"{cls.__name__} must subclass {self.base_cls.__name__}")
            for name in names:
                if name in self._entries:
                    raise ValueError(f"{self.kind} {name!r} is already registered")
                self._entries[name] = cls
            return cls

        return decorator

    def get(self, name: str) -> type[T]:
        """Return the class registered as ``name`` or raise with a did-you-mean message."""
        try:
            return self._entries[name]
        except KeyError:
            raise PrunelabError(unknown_name_message(self.kind, name, self._entries)) from None

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
