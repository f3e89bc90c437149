"""Imports every attack module so that each registers itself."""

from fl_cem.attacks import decoder  # noqa: F401
from fl_cem.attacks import gan  # noqa: F401
from fl_cem.attacks import rmle  # noqa: F401
