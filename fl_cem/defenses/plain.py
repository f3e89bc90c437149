"""Defenses that change nothing beyond the model options and the configured noise.

``none`` is the undefended baseline; ``bottleneck`` and ``noise`` name the rows of the paper's
Table 1 whose protection comes from ``model.bottleneck`` and ``noise.sigma`` alone, so that
report tables can tell the rows apart.
"""

from fl_cem.defenses.base import Defense
from fl_cem.registry import register_defense


@register_defense("none")
class NoDefense(Defense):
    """No defense beyond whatever ``model.bottleneck`` and ``noise.sigma`` already do."""


@register_defense("bottleneck")
class Bottleneck(Defense):
    """The 8-channel bottleneck of the paper's setting; requires ``model.bottleneck > 0``."""

    def __init__(self, cfg, shapes):  # type: ignore[no-untyped-def]
        super().__init__(cfg, shapes)
        if cfg.model.bottleneck <= 0:
            raise ValueError("defense 'bottleneck' needs model.bottleneck > 0 (paper: 8)")


@register_defense("noise")
class Noise(Defense):
    """Gaussian noise of std ``noise.sigma`` on the smashed data (added by the training step)."""

    requires_noise = True
