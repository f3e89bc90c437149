"""Registry of inversion attacks: ``register_attack``, ``get_attack``, ``list_attacks``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from fl_cem.registry import Registry

if TYPE_CHECKING:
    from fl_cem.attacks.base import Attack

_ATTACKS: Registry["Attack"] = Registry("attack")


def register_attack(name: str) -> Callable[[type["Attack"]], type["Attack"]]:
    """Class decorator adding an attack under ``name`` (the ``attack.name`` config value)."""
    return _ATTACKS.register(name)


def get_attack(name: str) -> type["Attack"]:
    """The attack class registered as ``name``."""
    _load_builtin()
    return _ATTACKS.get(name)


def list_attacks() -> list[str]:
    """Names of all registered attacks."""
    _load_builtin()
    return _ATTACKS.names()


def _load_builtin() -> None:
    import fl_cem.attacks.builtin  # noqa: F401  (registers on import)
