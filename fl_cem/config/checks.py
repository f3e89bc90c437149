"""Value checks shared by the config sections: each raises one line naming the key and the value."""

from __future__ import annotations

Scalar = bool | int | float | str
"""A config value: what a TOML file, ``--set`` and Flower's run config can carry."""


def config_key(metadata_key: str) -> dict[str, str]:
    """Field metadata for a field whose config key is not its name (``lambda`` is reserved)."""
    return {"key": metadata_key}


def one_of(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{key} must be one of {', '.join(allowed)}; got {value!r}")


def positive(key: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{key} must be > 0; got {value}")


def non_negative(key: str, value: float) -> None:
    if value < 0:
        raise ValueError(f"{key} must be >= 0; got {value}")


def fraction(key: str, value: float, *, closed_low: bool = False) -> None:
    low_ok = value >= 0 if closed_low else value > 0
    if not (low_ok and value <= 1):
        interval = "[0, 1]" if closed_low else "(0, 1]"
        raise ValueError(f"{key} must be in {interval}; got {value}")
