"""The optimisation-based white-box inversion attack ``rmle`` (regularised maximum likelihood).

With white-box access (paper Sec. 3.1) the attacker can search the image space directly
(He et al. 2019, "Model inversion attacks against collaborative inference", [14]): find the
image whose smashed data explains the observation z. Under the Gaussian noise of the wire,
z = F(x) + eps with eps ~ N(0, sigma^2 I), the negative log-likelihood of x is
||F(x) - z||^2 / (2 sigma^2) + const, so maximum likelihood is feature-space least squares;
a total-variation prior (weight ``attack.rmle-tv``) regularises the ill-posed directions.

The attack only gets the smashing function *with* noise. That suffices: with a fresh draw each
step, E||F(x) + eps - z||^2 = ||F(x) - z||^2 + d sigma^2 and the noise term's gradient has mean
zero, so Adam descends the noiseless objective stochastically. Smashing functions must be
differentiable and keep the encoder in eval mode (batch norm on running statistics).
"""

from __future__ import annotations

import torch
from torch import Tensor

from fl_cem.attacks.base import WhiteBoxAttack
from fl_cem.attacks.common import EpochCallback, Stream, as_images, seeded
from fl_cem.registry import register_attack

GRAY = 0.5
"""Starting pixel value before :meth:`RmleAttack.fit` has seen auxiliary images: mid-gray."""


def total_variation(x: Tensor) -> Tensor:
    """Per image (B,): mean absolute difference of vertically plus of horizontally adjacent pixels (anisotropic TV)."""
    vertical = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).mean(dim=1)
    horizontal = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).mean(dim=1)
    return vertical + horizontal


@register_attack("rmle")
class RmleAttack(WhiteBoxAttack):
    """Per-observation image search: Adam on sigmoid-parametrised pixels against feature MSE + TV."""

    def setup(self) -> None:
        self.start = torch.full(self.input_shape, GRAY, device=self.device)

    def fit(self, aux_images: Tensor, on_epoch: EpochCallback | None = None) -> dict[str, float]:
        """Use the auxiliary images only as the starting point: their per-pixel mean.

        Parameters
        ----------
        aux_images : Tensor
            Auxiliary images (N, C, H, W), float in [0, 1] or uint8.
        on_epoch : callable, optional
            Unused: nothing is trained; the optimisation happens in :meth:`invert`.

        Returns
        -------
        dict[str, float]
            Empty: there is no training loss.
        """
        self.start = as_images(aux_images, self.device).mean(dim=0)
        return {}

    def invert(self, z: Tensor) -> Tensor:
        """Reconstruct images in [0, 1] from smashed data ``z`` by ``attack.rmle-steps`` Adam steps per batch.

        Parameters
        ----------
        z : Tensor
            Observed smashed data (N, c, h, w).

        Returns
        -------
        Tensor
            Images (N, C, H, W) in [0, 1] on the attack's device.
        """
        # the logit of the start image, kept off +-inf so that saturated pixels can still move
        start_logit = torch.logit(self.start.clamp(0.01, 0.99))
        with seeded(self.seed, Stream.INVERT, self.device):
            return torch.cat(
                [
                    self._invert_batch(z[i : i + self.cfg.batch_size].to(self.device).float(), start_logit)
                    for i in range(0, len(z), self.cfg.batch_size)
                ]
            )

    def _invert_batch(self, z: Tensor, start_logit: Tensor) -> Tensor:
        """Adam on the pixel logits of one batch; summing over images keeps each image's gradient its own."""
        logits = start_logit.expand(len(z), *self.input_shape).clone().requires_grad_(True)
        optimizer = torch.optim.Adam([logits], lr=self.cfg.rmle_lr)
        for _ in range(self.cfg.rmle_steps):
            x = torch.sigmoid(logits)
            feature_mse = (self.smash(x) - z).pow(2).flatten(1).mean(dim=1)
            loss = (feature_mse + self.cfg.rmle_tv * total_variation(x)).sum()
            (grad,) = torch.autograd.grad(loss, logits)
            logits.grad = grad
            optimizer.step()
        return torch.sigmoid(logits).detach()
