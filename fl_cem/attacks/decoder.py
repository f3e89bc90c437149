"""The decoding-based inversion attack (paper Sec. 5.1 "Dec.-based MSE", supplement S.9; ResSFL [29]).

The attacker smashes its auxiliary images with the client's own smashing function (white-box
threat model, Sec. 3.1), noise included, and regresses the images on the smashed data with the
decoding network. Fresh noise is drawn every epoch, since the attacker knows the noise
distribution and the wire carries a new draw per sample. Minimising the pixel MSE makes the
decoder an estimate of E[x | z], the estimator whose error Theorem 1 lower-bounds.

The attacker keeps ``attack.validation`` of its own images out of training and returns the
network of the epoch with the lowest MSE on them: a real attacker can do this, and it keeps an
overfitted or diverged last epoch from understating the leakage. The targets are never used.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from fl_cem.attacks.base import WhiteBoxAttack
from fl_cem.attacks.common import EpochCallback, Stream, as_images, map_batches, seeded, shuffled_batches
from fl_cem.attacks.networks import INVERSION_NETWORKS
from fl_cem.registry import register_attack

COSINE_FLOOR = 1e-5
"""Learning rate the ``cosine`` schedule ends at (the authors' code)."""


@register_attack("decoder")
class DecoderAttack(WhiteBoxAttack):
    """Learned inverse z -> x trained with Adam on the pixel MSE, 50 epochs (paper S.9).

    The default optimiser is the CEM authors' (Adam 1e-3, weight decay 1e-4, cosine to 1e-5),
    not S.9's constant 0.005: at the same budget it leaks more (``benchmarks/attack_strength.py``).
    """

    def setup(self) -> None:
        with seeded(self.seed, Stream.INIT, self.device):
            self.net = INVERSION_NETWORKS[self.cfg.network](self.smashed_shape, self.input_shape).to(self.device)

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
            ``loss``: mean pixel MSE of the last epoch's batches (training mode); with a
            validation share also ``val_mse`` of the chosen epoch and ``best_epoch``.
        """
        images = as_images(aux_images, self.device)
        with seeded(self.seed, Stream.FIT, self.device):
            order = torch.randperm(len(images), device=self.device)
        held = min(len(images) - 2, math.floor(self.cfg.validation * len(images)))
        val, train = (images[order[:held]], images[order[held:]]) if held > 0 else (None, images)
        optimizer = self._optimizer()
        schedule = self._scheduler(optimizer)
        metrics: dict[str, float] = {}
        best: tuple[float, int, dict[str, Tensor] | None] = (math.inf, self.epochs, None)
        self.net.train()
        with seeded(self.seed, Stream.FIT, self.device):
            for epoch in range(1, self.epochs + 1):
                metrics = self._train_epoch(train, optimizer)
                if schedule is not None:
                    schedule.step()
                if val is not None:
                    metrics["val_mse"] = self._mse(val)
                    if metrics["val_mse"] < best[0]:
                        best = (metrics["val_mse"], epoch, copy.deepcopy(self.net.state_dict()))
                if on_epoch is not None:
                    on_epoch(epoch, metrics)
        if best[2] is not None:
            self.net.load_state_dict(best[2])
            metrics.update(val_mse=best[0], best_epoch=float(best[1]))
        self.net.eval()
        return metrics

    def _optimizer(self) -> torch.optim.Optimizer:
        """Adam on the decoding network at ``attack.lr`` and ``attack.weight-decay``."""
        return torch.optim.Adam(self.net.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)

    def _scheduler(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler | None:
        """``attack.schedule = cosine``: decay to :data:`COSINE_FLOOR` over the epochs; ``constant``: none."""
        if self.cfg.schedule == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, self.epochs, eta_min=COSINE_FLOOR)
        return None

    @torch.no_grad()
    def _mse(self, images: Tensor) -> float:
        """Pixel MSE of the current network on ``images`` smashed afresh (eval mode)."""
        self.net.eval()
        total = sum(F.mse_loss(self.net(self.smash(x)), x, reduction="sum").item() for x in images.split(self.cfg.batch_size))
        self.net.train()
        return total / images.numel()

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
