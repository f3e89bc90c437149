"""The interface every inversion attack implements.

Threat model (paper section 3.1): white-box. The attacker knows the client's smashing function
(encoder, defense transform in eval mode, and the noise distribution) and sees smashed data.
An attack is fitted on auxiliary images it smashes itself, then inverts intercepted features.
Images are float tensors in [0, 1] pixel space, shape (N, C, H, W).
"""

from __future__ import annotations

from typing import Callable, ClassVar

import torch
from torch import Tensor

from fl_cem.config import AttackConfig

SmashFn = Callable[[Tensor], Tensor]
"""Maps images in [0, 1] to the smashed data as it leaves the client (noise included)."""


class Attack:
    """Base class of inversion attacks; subclasses implement :meth:`fit` and :meth:`invert`."""

    name: ClassVar[str]

    def __init__(
        self,
        cfg: AttackConfig,
        smash: SmashFn,
        input_shape: tuple[int, int, int],
        smashed_shape: tuple[int, int, int],
        device: torch.device,
        seed: int = 0,
    ) -> None:
        self.cfg = cfg
        self.smash = smash
        self.input_shape = input_shape
        self.smashed_shape = smashed_shape
        self.device = device
        self.seed = seed
        self.setup()

    def setup(self) -> None:
        """Build the attack's networks and optimizers; subclasses override this, not ``__init__``."""

    def fit(self, aux_images: Tensor, on_epoch: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, float]:
        """Train the inversion model on auxiliary images; returns final training metrics."""
        return {}

    def invert(self, z: Tensor) -> Tensor:
        """Reconstruct images in [0, 1] from smashed data ``z``."""
        raise NotImplementedError
