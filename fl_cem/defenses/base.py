"""The one interface every defense implements.

A defense acts only on the client, where a real deployment would run it: it may change the
encoder (PATROL), transform the features before noise is added and they leave the client
(dropout, top-k), add loss terms to the encoder's objective (NoPeek, ARL), and train a
simulated adversary of its own on the client's (x, z) pairs. The server never sees raw data.

Data flow on the client, per batch (see ``fl_cem/training/step.py``)::

    x -> encoder -> z_raw -> defense.transform -> z_hat -> + N(0, sigma^2) -> z  (on the wire)
    encoder loss = <dL/dz from server, z> + defense.client_loss(x, z_hat, z, y) + lambda * L_C(z_hat)
    then defense.adversary_step(x, z_hat, z) for adversarial defenses

A defense is an ``nn.Module`` so that its trainable parts (an adversary decoder) travel in
``state_dict`` with the client's other state and checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor, nn

from fl_cem.config import Config


@dataclass(frozen=True)
class Shapes:
    """Tensor shapes a defense may need to size its parts; all without the batch dimension."""

    input: tuple[int, int, int]
    smashed: tuple[int, int, int]


class Defense(nn.Module):
    """Base class: every hook is a no-op, so a defense overrides only what it changes."""

    name: ClassVar[str]
    requires_noise: ClassVar[bool] = False
    """Refuse to run with ``noise.sigma = 0`` (noise-based defenses)."""

    def __init__(self, cfg: Config, shapes: Shapes) -> None:
        super().__init__()
        if self.requires_noise and cfg.noise.sigma <= 0:
            raise ValueError(f"defense {self.name!r} needs noise.sigma > 0")
        self.cfg = cfg
        self.shapes = shapes

    def wrap_encoder(self, encoder: nn.Module) -> nn.Module:
        """Change the encoder's architecture (called once, before training)."""
        return encoder

    def transform(self, z_raw: Tensor) -> Tensor:
        """Features leaving the encoder -> features before noise; obey ``self.training``."""
        return z_raw

    def client_loss(self, x: Tensor, z_hat: Tensor, z: Tensor, y: Tensor) -> Tensor | None:
        """Extra encoder loss computed on the client, or ``None``."""
        return None

    def adversary_step(self, x: Tensor, z_hat: Tensor, z: Tensor) -> dict[str, Tensor]:
        """Train the defense's simulated adversary on this batch; return detached scalars to log
        (tensors, not floats: reading a number from a GPU tensor waits for the device)."""
        return {}

