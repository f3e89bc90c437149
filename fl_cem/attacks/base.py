"""The interfaces inversion attacks implement, one per threat model.

Images are float tensors in [0, 1] pixel space, shape (N, C, H, W). The threat model is a
structural property of an attack class, not a convention: what the constructor takes is all
the attacker knows of the client.

- :class:`WhiteBoxAttack` (paper Sec. 3.1, the worst case the paper evaluates): the attacker
  holds the client's smashing function (encoder, defense transform in eval mode, the noise
  distribution), fits on auxiliary images it smashes itself, then inverts intercepted features.
- :class:`BlackBoxAttack` (a curious server in split learning, which never receives the
  client's weights: FORA, Xu et al. CVPR 2024; UnSplit, Erdogan et al. WPES 2022): the attacker
  knows only the client's public design (:class:`PublicDesign`: the architecture, buildable with
  fresh weights, and the noise law, Kerckhoffs's principle) and fits on auxiliary images plus the
  smashed data it intercepted. It never receives a function that runs the client's encoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Callable, ClassVar

import torch
from torch import Tensor, nn

from fl_cem.attacks.common import EpochCallback
from fl_cem.config import AttackConfig

SmashFn = Callable[[Tensor], Tensor]
"""Maps images in [0, 1] to the smashed data as it leaves the client (noise included)."""


class Threat(StrEnum):
    """What the attacker knows of the client; recorded with every attack result."""

    WHITE_BOX = "white-box"
    BLACK_BOX = "black-box"


@dataclass(frozen=True)
class PublicDesign:
    """What Kerckhoffs's principle grants a black-box attacker: the client's design, not its weights."""

    encoder: Callable[[], nn.Module]
    """Builds a new encoder of the client's architecture (the project's model code), initialised
    from the global random generator: the attacker seeds it with its own seed."""
    sigma: float
    """Standard deviation of the Gaussian noise on the wire (``noise.sigma``)."""


class Attack:
    """What every inversion attack shares: config, shapes, device, seed and :meth:`invert`."""

    name: ClassVar[str]
    threat: ClassVar[Threat]
    channel: ClassVar[str] = "smashed"
    """What the attack inverts: ``smashed`` data (one image per row), or the ``cem-stats`` channel
    (per-cluster statistics, one prototype per class; :mod:`fl_cem.attacks.channel` attacks a run with it)."""

    def __init__(
        self, cfg: AttackConfig, input_shape: tuple[int, int, int], smashed_shape: tuple[int, int, int], device: torch.device, seed: int
    ) -> None:
        self.cfg = cfg
        self.input_shape = input_shape
        self.smashed_shape = smashed_shape
        self.device = device
        self.seed = seed

    def setup(self) -> None:
        """Build the attack's networks and optimizers; subclasses override this, not ``__init__``."""

    @property
    def max_targets(self) -> int:
        """Most targets the attack reconstructs (0: all); per-target optimisations cap their cost with it."""
        return 0

    def invert(self, z: Tensor) -> Tensor:
        """Reconstruct images in [0, 1] from smashed data ``z``."""
        raise NotImplementedError


class WhiteBoxAttack(Attack):
    """Base class of white-box attacks; subclasses implement :meth:`fit` and :meth:`invert`."""

    threat = Threat.WHITE_BOX

    def __init__(
        self,
        cfg: AttackConfig,
        smash: SmashFn,
        input_shape: tuple[int, int, int],
        smashed_shape: tuple[int, int, int],
        device: torch.device,
        seed: int = 0,
    ) -> None:
        super().__init__(cfg, input_shape, smashed_shape, device, seed)
        self.smash = smash
        self.setup()

    def fit(self, aux_images: Tensor, on_epoch: EpochCallback | None = None) -> dict[str, float]:
        """Train the inversion model on auxiliary images; returns final training metrics."""
        return {}


class BlackBoxAttack(Attack):
    """Base class of black-box attacks: no smashing function, only the client's public design."""

    threat = Threat.BLACK_BOX
    fits_intercepted: ClassVar[bool] = False
    """Whether :meth:`fit` learns from intercepted smashed data beyond the targets' (FORA matches
    their distribution); the harness smashes and passes such rows only to attacks that use them."""

    def __init__(
        self,
        cfg: AttackConfig,
        design: PublicDesign,
        input_shape: tuple[int, int, int],
        smashed_shape: tuple[int, int, int],
        device: torch.device,
        seed: int = 0,
    ) -> None:
        super().__init__(cfg, input_shape, smashed_shape, device, seed)
        self.design = design
        self.setup()

    def fit(
        self, aux_images: Tensor, observed: Tensor, on_epoch: EpochCallback | None = None, intercepted: Tensor | None = None
    ) -> dict[str, float]:
        """Learn from auxiliary images and smashed data; returns final metrics.

        ``observed`` (N, c, h, w) is the targets' smashed data, the rows :meth:`invert` is then
        called on; ``intercepted`` (M, c, h, w), for :attr:`fits_intercepted` attacks, is what else
        the server received from the client, of images the attacker does not hold.
        """
        raise NotImplementedError
