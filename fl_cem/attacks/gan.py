"""The GAN-based inversion attack (paper Sec. 5.1 "GAN-based MSE", supplement S.9).

Following Zhang et al. 2020 ("The secret revealer", [68]) as the paper adapts it: the generator
is the decoding network of :mod:`fl_cem.attacks.networks` fed with smashed data, a critic tells
real auxiliary images from reconstructions, and both train as a WGAN-GP (Gulrajani et al. 2017).
The paper adds a pixel-MSE term to the generator loss "to regularize the training process",
which it finds lowers the reconstruction MSE (S.9); the authors' code weights it by 1500.
Generator loss: ``-critic(G(z)).mean() + attack.gan-mse-weight * MSE(G(z), x)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fl_cem.attacks.common import Stream, seeded, shuffled_batches
from fl_cem.attacks.decoder import DecoderAttack
from fl_cem.attacks.networks import critic
from fl_cem.registry import register_attack

GRADIENT_PENALTY = 10.0
"""Weight of the WGAN-GP gradient penalty (Gulrajani et al. 2017; Zhang et al. 2020 use it too)."""
ADAM_BETAS = (0.5, 0.999)
"""Adam betas of both players, as in Zhang et al.'s GAN training."""


def gradient_penalty(score: nn.Module, real: Tensor, fake: Tensor) -> Tensor:
    """WGAN-GP penalty ``E[(||grad_x critic(x_hat)||_2 - 1)^2]`` on random real/fake interpolates.

    Parameters
    ----------
    score : nn.Module
        The critic, images (B, C, H, W) -> scores (B,).
    real, fake : Tensor
        Batches of the same shape; ``fake`` must be detached from the generator.

    Returns
    -------
    Tensor
        The scalar penalty, differentiable with respect to the critic's parameters.
    """
    alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device)
    mixed = (real + alpha * (fake - real)).requires_grad_(True)
    (grad,) = torch.autograd.grad(score(mixed).sum(), mixed, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


@register_attack("gan")
class GanAttack(DecoderAttack):
    """Decoding network trained adversarially against a critic plus a weighted pixel MSE."""

    def setup(self) -> None:
        super().setup()
        with seeded(self.seed, Stream.CRITIC_INIT, self.device):
            self.critic = critic(self.input_shape).to(self.device)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=self.cfg.gan_lr, betas=ADAM_BETAS)
        self._batches_seen = 0

    @property
    def epochs(self) -> int:
        """Training epochs of this attack (``attack.gan-epochs``; paper S.9: 150)."""
        return self.cfg.gan_epochs

    def _optimizer(self) -> torch.optim.Optimizer:
        """Adam on the generator at ``attack.gan-lr`` (paper S.9: 0.005) with GAN betas."""
        return torch.optim.Adam(self.net.parameters(), lr=self.cfg.gan_lr, betas=ADAM_BETAS)

    def _scheduler(self, optimizer: torch.optim.Optimizer) -> None:
        """A constant rate: the two players' balance under a decaying generator rate is untested here."""
        return None

    def _train_epoch(self, images: Tensor, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        """One pass: a critic update every batch, a generator update every ``gan-n-critic`` batches."""
        sums = {name: torch.zeros((), device=self.device) for name in ("loss", "critic_loss", "wasserstein")}
        seen = 0
        for idx in shuffled_batches(len(images), self.cfg.batch_size, self.device):
            x = images[idx]
            with torch.no_grad():
                z = self.smash(x)
            fake = self.net(z)

            wasserstein = self.critic(x).mean() - self.critic(fake.detach()).mean()
            critic_loss = -wasserstein + GRADIENT_PENALTY * gradient_penalty(self.critic, x, fake.detach())
            self.critic_optimizer.zero_grad(set_to_none=True)
            critic_loss.backward()
            self.critic_optimizer.step()

            mse = F.mse_loss(fake, x)
            self._batches_seen += 1
            if self._batches_seen % self.cfg.gan_n_critic == 0:
                generator_loss = -self.critic(fake).mean() + self.cfg.gan_mse_weight * mse
                optimizer.zero_grad(set_to_none=True)
                generator_loss.backward()
                optimizer.step()

            sums["loss"] += mse.detach() * len(idx)
            sums["critic_loss"] += critic_loss.detach() * len(idx)
            sums["wasserstein"] += wasserstein.detach() * len(idx)
            seen += len(idx)
        return {name: total.item() / max(seen, 1) for name, total in sums.items()}
