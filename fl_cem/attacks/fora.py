"""FORA, the black-box substitute-encoder attack (Xu et al., "A Stealthy Wolf in Sheep's Clothing:
Feature-Oriented Reconstruction Attack", CVPR 2024).

A curious server never receives the client's encoder, but it sees the smashed data and may
know the architecture and the noise law (Kerckhoffs). FORA turns that into a white-box attack
on a stand-in: it trains a *substitute* encoder, the client's architecture with the attacker's
own random initialisation, on auxiliary images so that the distribution of its outputs matches
the distribution of the intercepted smashed data. There are no image/feature pairs: the match
is between distributions, through two terms (FORA Sec. 3.3, its code's weight ``a`` = 0.8):

- MK-MMD, the multi-kernel maximum mean discrepancy of Long et al. 2015 ("Learning
  transferable features with deep adaptation networks"), between batches of substitute
  features and intercepted features;
- an adversarial term: a feature critic learns to tell the two apart, trained as a WGAN-GP
  (Gulrajani et al. 2017), and the substitute learns to fool it.

Then the attacker runs the decoding attack (:class:`DecoderAttack`, ``attack.epochs``,
``attack.lr`` ...) against the substitute plus the wire's noise, on its own images, keeping the
epoch that does best on held-out auxiliary images, and applies the decoder to the intercepted
data. How well that transfers to the real client is exactly what the score measures.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fl_cem.attacks.base import BlackBoxAttack
from fl_cem.attacks.common import EpochCallback, Stream, as_images, seeded, shuffled_batches
from fl_cem.attacks.decoder import DecoderAttack
from fl_cem.attacks.gan import ADAM_BETAS, GRADIENT_PENALTY, gradient_penalty
from fl_cem.attacks.networks import feature_critic
from fl_cem.registry import register_attack

KERNEL_SCALES = (0.5, 1.0, 2.0)
"""Bandwidths of the MK-MMD's Gaussian kernels, as multiples of the batch's mean squared
distance (the Transfer-Learning-Library MK-MMD that FORA's code uses: alpha 0.5, 1, 2)."""


def mk_mmd(source: Tensor, target: Tensor, scales: tuple[float, ...] = KERNEL_SCALES) -> Tensor:
    """Biased MK-MMD^2 estimate between two batches of flattened features (Long et al. 2015, Eq. 3).

    Each kernel is ``exp(-||a - b||^2 / (2 * scale * m))`` with ``m`` the mean squared distance
    of all pairs in the joint batch (detached: the bandwidth follows the data, it is not
    optimised), and the kernels are summed.

    Parameters
    ----------
    source, target : Tensor
        (n, d) and (m, d) features.
    scales : tuple[float, ...]
        Kernel bandwidths relative to the mean squared distance.

    Returns
    -------
    Tensor
        The scalar estimate, differentiable with respect to both batches.
    """
    joint = torch.cat([source, target])
    squared = joint.pow(2).sum(dim=1)
    # the expanded form, not cdist: its gradient is finite on the zero diagonal
    distances = (squared[:, None] + squared[None, :] - 2 * joint @ joint.T).clamp_min(0)
    bandwidth = distances.detach().mean().clamp_min(1e-12)
    kernel = sum(torch.exp(-distances / (2 * scale * bandwidth)) for scale in scales)
    n = len(source)
    return kernel[:n, :n].mean() + kernel[n:, n:].mean() - 2 * kernel[:n, n:].mean()  # type: ignore[union-attr]


@register_attack("fora")
class ForaAttack(BlackBoxAttack):
    """Substitute encoder matched to the intercepted features (MK-MMD + critic), then a decoder trained on it."""

    fits_intercepted = True

    def setup(self) -> None:
        with seeded(self.seed, Stream.CRITIC_INIT, self.device):
            self.substitute = self.design.encoder().to(self.device)
            self.critic = feature_critic(self.smashed_shape).to(self.device)
        self.inversion = DecoderAttack(self.cfg, self._smash_substitute, self.input_shape, self.smashed_shape, self.device, self.seed)

    @property
    def epochs(self) -> int:
        """Substitute epochs (``attack.fora-epochs``) then the inversion's (``attack.epochs``)."""
        return self.cfg.fora_epochs + self.inversion.epochs

    def _smash_substitute(self, x: Tensor) -> Tensor:
        """The substitute's features plus the wire's Gaussian noise: the attacker's model of the client."""
        z = self.substitute(x)
        return z + self.design.sigma * torch.randn_like(z) if self.design.sigma > 0 else z

    def fit(
        self, aux_images: Tensor, observed: Tensor, on_epoch: EpochCallback | None = None, intercepted: Tensor | None = None
    ) -> dict[str, float]:
        """Match the substitute to all the smashed data intercepted, then train the decoder on it.

        Parameters
        ----------
        aux_images : Tensor
            Auxiliary images (N, C, H, W), float in [0, 1] or uint8.
        observed : Tensor
            The targets' smashed data (M, c, h, w); no images come with it.
        on_epoch : callable, optional
            Called after each epoch of both stages, numbered on from 1: ``mmd``, ``critic_loss``
            and ``wasserstein`` while the substitute trains, then the decoder's metrics.
        intercepted : Tensor, optional
            Further smashed data of the client's (K, c, h, w), of images outside ``aux_images``:
            the distribution to match is that of all ``M + K`` rows, as FORA's server matches
            what it intercepts over a whole training run.

        Returns
        -------
        dict[str, float]
            The last substitute epoch's metrics and the inversion stage's (see :meth:`DecoderAttack.fit`).
        """
        images = as_images(aux_images, self.device)
        real = torch.cat([observed, *([] if intercepted is None else [intercepted])]).to(self.device).float()
        optimizer = torch.optim.Adam(self.substitute.parameters(), lr=self.cfg.fora_lr, betas=ADAM_BETAS)
        critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=self.cfg.fora_critic_lr, betas=ADAM_BETAS)
        metrics: dict[str, float] = {}
        self.substitute.train()
        with seeded(self.seed, Stream.FIT, self.device):
            for epoch in range(1, self.cfg.fora_epochs + 1):
                metrics = self._substitute_epoch(images, real, optimizer, critic_optimizer)
                if on_epoch is not None:
                    on_epoch(epoch, metrics)
        self.substitute.eval().requires_grad_(False)

        def inversion_epoch(epoch: int, inversion_metrics: dict[str, float]) -> None:
            if on_epoch is not None:
                on_epoch(self.cfg.fora_epochs + epoch, inversion_metrics)

        return {**metrics, **self.inversion.fit(images, inversion_epoch)}

    def _substitute_epoch(
        self, images: Tensor, real: Tensor, optimizer: torch.optim.Optimizer, critic_optimizer: torch.optim.Optimizer
    ) -> dict[str, float]:
        """One pass over the auxiliary images, each batch against as many intercepted features drawn at random."""
        sums = {name: torch.zeros((), device=self.device) for name in ("mmd", "critic_loss", "wasserstein")}
        seen = 0
        a = self.cfg.fora_mmd_weight
        for idx in shuffled_batches(len(images), self.cfg.batch_size, self.device):
            observed = real[torch.randint(len(real), (len(idx),), device=self.device)]
            fake = self._smash_substitute(images[idx])

            wasserstein = self.critic(observed).mean() - self.critic(fake.detach()).mean()
            critic_loss = -wasserstein + GRADIENT_PENALTY * gradient_penalty(self.critic, observed, fake.detach())
            critic_optimizer.zero_grad(set_to_none=True)
            critic_loss.backward()
            critic_optimizer.step()

            mmd = mk_mmd(fake.flatten(1), observed.flatten(1))
            loss = (1 - a) * -self.critic(fake).mean() + a * mmd
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

            sums["mmd"] += mmd.detach() * len(idx)
            sums["critic_loss"] += critic_loss.detach() * len(idx)
            sums["wasserstein"] += wasserstein.detach() * len(idx)
            seen += len(idx)
        return {name: total.item() / max(seen, 1) for name, total in sums.items()}

    def invert(self, z: Tensor) -> Tensor:
        """The decoder trained on the substitute, applied to smashed data ``z`` (N, c, h, w)."""
        return self.inversion.invert(z)
