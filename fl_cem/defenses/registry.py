"""Registry of defenses: ``register_defense``, ``get_defense``, ``list_defenses``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from fl_cem.registry import Registry

if TYPE_CHECKING:
    from fl_cem.defenses.base import Defense

_DEFENSES: Registry["Defense"] = Registry("defense")


def register_defense(name: str) -> Callable[[type["Defense"]], type["Defense"]]:
    """Class decorator adding a defense under ``name`` (the ``defense.name`` config value)."""
    return _DEFENSES.register(name)


def get_defense(name: str) -> type["Defense"]:
    """The defense class registered as ``name``."""
    _load_builtin()
    return _DEFENSES.get(name)


def list_defenses() -> list[str]:
    """Names of all registered defenses."""
    _load_builtin()
    return _DEFENSES.names()


def _load_builtin() -> None:
    import fl_cem.defenses.builtin  # noqa: F401  (registers on import)
