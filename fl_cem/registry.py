"""The registries of defenses and attacks, after ``torchvision.models._api``: name -> class.

The registered name is the one config files and report tables use, so a duplicate name is an
error rather than a silent override. Each built-in name maps to the module that registers it,
so listing and validating names (``Config`` does, on load) imports no defense or attack code,
and a class's module is imported only when the class is asked for: config, defenses and
attacks do not import each other in a circle. Third-party classes register with the decorators
(``@register_defense("mine")``) once their module is imported, before the config is loaded.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Callable, Generic, Mapping, TypeVar

if TYPE_CHECKING:
    from fl_cem.attacks.base import Attack
    from fl_cem.defenses.base import Defense

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of classes with duplicate-safe registration and lazily imported built-ins."""

    def __init__(self, kind: str, builtin: Mapping[str, str]) -> None:
        self.kind = kind
        self.builtin = dict(builtin)
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
        if name not in self._entries and name in self.builtin:
            importlib.import_module(self.builtin[name])
        try:
            return self._entries[name]
        except KeyError:
            raise ValueError(f"unknown {self.kind} {name!r}; choose one of {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        return sorted(set(self.builtin) | set(self._entries))


DEFENSES: Registry["Defense"] = Registry(
    "defense",
    {
        "none": "fl_cem.defenses.plain",
        "bottleneck": "fl_cem.defenses.plain",
        "noise": "fl_cem.defenses.plain",
        "arl": "fl_cem.defenses.adversarial",
        "noise_arl": "fl_cem.defenses.adversarial",
        "ressfl": "fl_cem.defenses.adversarial",
        "distcorr": "fl_cem.defenses.distcorr",
        "noise_nopeek": "fl_cem.defenses.distcorr",
        "dropout": "fl_cem.defenses.masking",
        "topk": "fl_cem.defenses.masking",
        "patrol": "fl_cem.defenses.patrol",
    },
)
"""``defense.name`` values and the modules that define them."""

ATTACKS: Registry["Attack"] = Registry(
    "attack",
    {
        "decoder": "fl_cem.attacks.decoder",
        "gan": "fl_cem.attacks.gan",
        "rmle": "fl_cem.attacks.rmle",
        "fora": "fl_cem.attacks.fora",
        "unsplit": "fl_cem.attacks.unsplit",
        "cem_stats": "fl_cem.attacks.cem_stats",
    },
)
"""``attack.name`` values and the modules that define them."""


def register_defense(name: str) -> Callable[[type["Defense"]], type["Defense"]]:
    """Class decorator adding a defense under ``name`` (the ``defense.name`` config value)."""
    return DEFENSES.register(name)


def get_defense(name: str) -> type["Defense"]:
    """The defense class registered as ``name``."""
    return DEFENSES.get(name)


def list_defenses() -> list[str]:
    """Names of all defenses, built-in and registered; imports none of them."""
    return DEFENSES.names()


def register_attack(name: str) -> Callable[[type["Attack"]], type["Attack"]]:
    """Class decorator adding an attack under ``name`` (the ``attack.name`` config value)."""
    return ATTACKS.register(name)


def get_attack(name: str) -> type["Attack"]:
    """The attack class registered as ``name``."""
    return ATTACKS.get(name)


def list_attacks() -> list[str]:
    """Names of all attacks, built-in and registered; imports none of them."""
    return ATTACKS.names()
