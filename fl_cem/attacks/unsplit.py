"""UnSplit, the black-box joint inversion (Erdogan et al., "UnSplit: Data-Oblivious Model Inversion,
Model Stealing, and Label Inference Attacks Against Split Learning", WPES 2022).

The server sees smashed data z but not the encoder F that made it. UnSplit searches for both
at once: a surrogate encoder F' (the client's architecture with the attacker's own random
initialisation) and images x such that F'(x) explains z,

    min_{x, F'}  ||F'(x) - z||^2 + lambda_TV * TV(x),

alternating Adam steps on the images (surrogate fixed) and on the surrogate (images fixed), as
the paper's Algorithm 1 does (there: 1,000 rounds of 100 + 100 steps, Adam 1e-3, lambda_TV 0.1,
images starting mid-gray). Here the images start from the auxiliary mean image, the
no-information guess every attack must beat, and stay in [0, 1] by projection.

The problem is ill-posed (any invertible reparametrisation of F' fits as well), so only the TV
prior and the architecture pull the images towards the truth; UnSplit reports it works for
shallow cuts. It is per-target optimisation: it reconstructs at most ``attack.unsplit-targets``
observations (the first ones), jointly, with one surrogate shared by all of them, and it has
no inverse model to apply to other data: :meth:`UnsplitAttack.invert` returns the
reconstructions of exactly the observations it was fitted on.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fl_cem.attacks.base import BlackBoxAttack
from fl_cem.attacks.common import EpochCallback, Stream, as_images, seeded
from fl_cem.attacks.rmle import total_variation
from fl_cem.registry import register_attack


@register_attack("unsplit")
class UnsplitAttack(BlackBoxAttack):
    """Alternating Adam on the images and on a surrogate encoder against feature MSE + TV."""

    def setup(self) -> None:
        with seeded(self.seed, Stream.INIT, self.device):
            # eval mode: batch norm as a learnable per-channel affine map, so each image's features are its own
            self.surrogate = self.design.encoder().to(self.device).eval()
        self.observed: Tensor | None = None
        self.reconstructions: Tensor | None = None

    @property
    def max_targets(self) -> int:
        """``attack.unsplit-targets``: the per-target optimisation's cost cap."""
        return self.cfg.unsplit_targets

    @property
    def epochs(self) -> int:
        """Rounds of alternation (``attack.unsplit-rounds``), each reported as an epoch."""
        return self.cfg.unsplit_rounds

    def fit(
        self, aux_images: Tensor, observed: Tensor, on_epoch: EpochCallback | None = None, intercepted: Tensor | None = None
    ) -> dict[str, float]:
        """Jointly optimise the surrogate and one image per intercepted observation.

        Parameters
        ----------
        aux_images : Tensor
            Auxiliary images (N, C, H, W); only their mean is used, as the starting image.
        observed : Tensor
            The observations to invert (M, c, h, w), at most ``attack.unsplit-targets`` of them.
        on_epoch : callable, optional
            Called after each round with ``feature_mse`` (per element, the last image step's)
            and ``tv`` (mean over the images).
        intercepted : Tensor, optional
            Not used (``fits_intercepted`` is False): every row UnSplit fits costs an image to
            optimise, so it fits only the observations it reconstructs.

        Returns
        -------
        dict[str, float]
            The last round's ``feature_mse`` and ``tv``.
        """
        if len(observed) > self.max_targets:
            raise ValueError(f"unsplit reconstructs at most attack.unsplit-targets = {self.max_targets} observations; got {len(observed)}")
        z = observed.to(self.device).float()
        start = as_images(aux_images, self.device).mean(dim=0)
        x = start.expand(len(z), *self.input_shape).clone().requires_grad_(True)
        image_optimizer = torch.optim.Adam([x], lr=self.cfg.unsplit_lr)
        model_optimizer = torch.optim.Adam(self.surrogate.parameters(), lr=self.cfg.unsplit_lr)
        metrics: dict[str, float] = {}
        for round_ in range(1, self.cfg.unsplit_rounds + 1):
            self.surrogate.requires_grad_(False)
            for _ in range(self.cfg.unsplit_input_steps):
                feature_mse = (self.surrogate(x) - z).pow(2).flatten(1).mean(dim=1)
                tv = total_variation(x)
                # summed over images: each image's gradient is its own
                image_optimizer.zero_grad(set_to_none=True)
                (feature_mse + self.cfg.unsplit_tv * tv).sum().backward()
                image_optimizer.step()
                with torch.no_grad():
                    x.clamp_(0, 1)
            self.surrogate.requires_grad_(True)
            images = x.detach()
            for _ in range(self.cfg.unsplit_model_steps):
                model_optimizer.zero_grad(set_to_none=True)
                (self.surrogate(images) - z).pow(2).mean().backward()
                model_optimizer.step()
            metrics = {"feature_mse": feature_mse.mean().item(), "tv": tv.mean().item()}
            if on_epoch is not None:
                on_epoch(round_, metrics)
        self.surrogate.requires_grad_(False)
        self.observed, self.reconstructions = z, x.detach()
        return metrics

    def invert(self, z: Tensor) -> Tensor:
        """The reconstructions of :meth:`fit`; ``z`` must be the observations it was fitted on."""
        if self.observed is None or self.reconstructions is None or not torch.equal(z.to(self.device).float(), self.observed):
            raise ValueError("unsplit reconstructs only the observations it was fitted on: call fit with them first")
        return self.reconstructions
