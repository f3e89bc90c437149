"""Flat ``section.key`` plumbing: nested tables to dotted keys, ``--set`` parsing."""

from __future__ import annotations

import tomllib
from typing import Any, Mapping


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested tables to dotted keys, as Flower does for run configs."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        full = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{full}."))
        else:
            out[full] = value
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """Parse one ``--set key=value``; the value is read as TOML, falling back to a bare string."""
    if "=" not in text:
        raise ValueError(f"--set expects key=value; got {text!r}")
    key, raw = (part.strip() for part in text.split("=", 1))
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value
