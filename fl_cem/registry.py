"""Name -> class registries for defenses and attacks, after ``torchvision.models._api``.

The registered name is the one config files and report tables use, so a duplicate name is an
error rather than a silent override.
"""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of classes with duplicate-safe registration."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        def wrapper(cls: type[T]) -> type[T]:
            if name in self._entries:
                raise ValueError(f"a {self.kind} named {name!r} is already registered")
            cls.name = name  # type: ignore[attr-defined]
            self._entries[name] = cls
            return cls

        return wrapper

    def get(self, name: str) -> type[T]:
        try:
            return self._entries[name]
        except KeyError:
            raise ValueError(f"unknown {self.kind} {name!r}; choose one of {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)
