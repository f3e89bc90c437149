"""The decoding-based inversion attack (paper Sec. 5.1 "Dec.-based MSE", supplement S.9; ResSFL [29]).

The attacker smashes its auxiliary images with the client's own smashing function (white-box
threat model, Sec. 3.1), noise included, and regresses the images on the smashed data with the
decoding network. Fresh noise is drawn every epoch, since the attacker knows the noise
distribution and the wire carries a new draw per sample. Minimising the pixel MSE makes the
decoder an estimate of E[x | z], the estimator whose error Theorem 1 lower-bounds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fl_cem.attacks.base import Attack
from fl_cem.attacks.common import EpochCallback, Stream, as_images, map_batches, seeded, shuffled_batches
from fl_cem.attacks.networks import decoding_network
from fl_cem.attacks.registry import register_attack


@register_attack("decoder")
class DecoderAttack(Attack):
    """Learned inverse z -> x trained with Adam on the pixel MSE (paper S.9: 50 epochs, lr 0.005)."""

    def setup(self) -> None:
        with seeded(self.seed, Stream.INIT, self.device):
            self.net = decoding_network(self.smashed_shape, self.input_shape).to(self.device)

    @property
    def epochs(self) -> int:
        """Training epochs of this attack (``attack.epochs``)."""
        return self.cfg.epochs

    def fit(self, aux_images: Tensor, on_epoch: EpochCallback | None = None) -> dict[str, float]:
        """Train the decoding network on ``aux_images`` smashed afresh each epoch.

        Parameters
        ----------
        aux_images : Tensor
            Auxiliary images (N, C, H, W), float in [0, 1] or uint8.
        on_epoch : callable, optional
            Called as ``on_epoch(epoch, {"loss": ...})`` after each epoch, epochs counted from 1.

        Returns
        -------
        dict[str, float]
            ``{"loss": ...}``: mean pixel MSE of the last epoch's batches (training mode).
        """
        images = as_images(aux_images, self.device)
        optimizer = self._optimizer()
        metrics: dict[str, float] = {}
        self.net.train()
        with seeded(self.seed, Stream.FIT, self.device):
            for epoch in range(1, self.epochs + 1):
                metrics = self._train_epoch(images, optimizer)
                if on_epoch is not None:
                    on_epoch(epoch, metrics)
        self.net.eval()
        return metrics

    def _optimizer(self) -> torch.optim.Optimizer:
        """Adam on the decoding network at ``attack.lr`` (paper S.9: 0.005)."""
        return torch.optim.Adam(self.net.parameters(), lr=self.cfg.lr)

    def _train_epoch(self, images: Tensor, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        """One pass of pixel-MSE regression over shuffled batches."""
        loss_sum = torch.zeros((), device=self.device)
        seen = 0
        for idx in shuffled_batches(len(images), self.cfg.batch_size, self.device):
            x = images[idx]
            with torch.no_grad():
                z = self.smash(x)
            loss = F.mse_loss(self.net(z), x)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(idx)
            seen += len(idx)
        return {"loss": loss_sum.item() / max(seen, 1)}

    def invert(self, z: Tensor) -> Tensor:
        """Reconstruct images in [0, 1] from smashed data ``z`` (N, c, h, w); returned on the attack's device."""
        self.net.eval()
        return map_batches(self.net, z.float(), self.cfg.batch_size, self.device)
