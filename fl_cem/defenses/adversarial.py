"""Attacker-aware defenses: the client trains a simulated inversion network and its encoder
plays a min-max game against it.

The game, shared by ARL (Xiao et al. 2020), ResSFL ([29]), Noise_ARL ([19]) and PATROL's
training ([7]), alternates one step per batch, as ResSFL's ``gan_adv_step1`` setting does::

    encoder:    min  task loss + adversary-weight * privacy_term(A(z), x)     (A frozen)
    adversary:  min  adversary_objective(A(z), x)                              (z detached)

Both run on the client. ARL, ResSFL and PATROL play on the noise-free features ``z_hat``, as
Xiao et al. define ARL and as the CEM authors' code plays every ``gan_adv`` defense (the
simulated attacker and the encoder's penalty both see the clean encoder output,
``model_training_paral_pruning.py`` lines 1149-1161 and 1519-1556); Noise_ARL plays on the
noisy features ``z`` as they go on the wire, which is what makes it Jeong et al.'s method. The
simulated adversary A is ResSFL's training-time attacker:
the paper's decoding network (supplement S.9) with 4 instead of 8 residual blocks
(``res_normN4C64`` in the ResSFL and CEM code). Its Adam state lives in buffers
(:class:`~fl_cem.defenses.optim.ModuleAdam`), so ``state_dict()`` restores the game exactly.

"Pretrained/alternating": the ResSFL and CEM code first fits the simulated attacker alone, then
alternates. Here ``defense.adversary-warmup`` adversary steps run before the privacy term is
switched on; during them the encoder trains on the task only (it is never frozen by a defense).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import ClassVar, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fl_cem.attacks.networks import decoding_network
from fl_cem.config import Config
from fl_cem.defenses.base import Defense, Shapes
from fl_cem.defenses.optim import ModuleAdam
from fl_cem.registry import register_defense

SIMULATED_BLOCKS = 4
"""Residual blocks of the simulated attacker (ResSFL's ``res_normN4C64``; the evaluation attack has 8)."""


@contextmanager
def frozen(module: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no parameter gradients for the duration, then restore both.

    The encoder's loss goes through the adversary; freezing it keeps that backward pass from
    touching the adversary's weights and batch-norm statistics, which only its own step updates.
    """
    was_training = module.training
    flags = [p.requires_grad for p in module.parameters()]
    module.eval().requires_grad_(False)
    try:
        yield module
    finally:
        module.train(was_training)
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)


def ssim(x_rec: Tensor, x: Tensor) -> Tensor:
    """Mean SSIM (Wang et al. 2004) of images in [0, 1], differentiable, with the attack metric's window."""
    # imported on first use: torchmetrics takes seconds to import, and every config validation
    # imports the defense registry
    from torchmetrics.functional.image import structural_similarity_index_measure

    from fl_cem.attacks.metrics import ssim_window

    kernel, sigma = ssim_window(*x.shape[-2:])
    value = structural_similarity_index_measure(x_rec, x, data_range=1.0, kernel_size=kernel, sigma=sigma)
    assert isinstance(value, Tensor)  # a tuple only with return_full_image or return_contrast_sensitivity
    return value


class AdversarialDefense(Defense):
    """Base of the min-max defenses; subclasses choose the two losses and the game's features.

    By default the adversary minimises the pixel MSE and the encoder maximises it
    (``privacy_term = -MSE``), Xiao et al.'s negative pixel reconstruction loss.
    """

    plays_on_noisy: ClassVar[bool] = False
    """Whether the game sees ``z`` (noise included) instead of the noise-free ``z_hat``."""

    def __init__(self, cfg: Config, shapes: Shapes) -> None:
        super().__init__(cfg, shapes)
        self.weight = cfg.defense.adversary_weight
        self.warmup = cfg.defense.adversary_warmup
        with torch.random.fork_rng(devices=[]):
            # same seed on every client, so a federation starts from one simulated attacker
            torch.manual_seed(cfg.run.seed)
            self.adversary = decoding_network(shapes.smashed, shapes.input, blocks=SIMULATED_BLOCKS)
        self.optimizer = ModuleAdam(list(self.adversary.parameters()), lr=cfg.defense.adversary_lr)

    def adversary_objective(self, x_rec: Tensor, x: Tensor) -> Tensor:
        """What the simulated adversary minimises."""
        return F.mse_loss(x_rec, x)

    def privacy_term(self, x_rec: Tensor, x: Tensor) -> Tensor:
        """What the encoder minimises (before the weight): here, the negative adversary loss."""
        return -self.adversary_objective(x_rec, x)

    @property
    def privacy_on(self) -> bool:
        """Whether the warm-up of the simulated adversary is over."""
        return self.optimizer.count >= self.warmup

    def client_loss(self, x: Tensor, z_hat: Tensor, z: Tensor, y: Tensor) -> Tensor | None:
        """``adversary-weight * privacy_term(A(features), x)`` with A frozen; ``None`` during warm-up."""
        if not self.privacy_on:
            return None
        with frozen(self.adversary):
            x_rec = self.adversary(z if self.plays_on_noisy else z_hat)
        return self.weight * self.privacy_term(x_rec, x)

    def adversary_step(self, x: Tensor, z_hat: Tensor, z: Tensor) -> dict[str, Tensor]:
        """One Adam step of the simulated adversary on the game's features; returns its loss before the step."""
        was_training = self.adversary.training
        self.adversary.train()
        loss = self.adversary_objective(self.adversary((z if self.plays_on_noisy else z_hat).detach()), x)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.adversary.train(was_training)
        return {"loss": loss.detach()}

    @torch.no_grad()
    def reconstruction_loss(self, x: Tensor, z: Tensor) -> Tensor:
        """The adversary's objective on ``(z, x)`` without training it (monitoring and tests)."""
        with frozen(self.adversary):
            return self.adversary_objective(self.adversary(z), x)


def random_features(channels: int, seed: int) -> nn.Sequential:
    """A fixed, randomly initialised two-layer conv net whose activations define a perceptual distance.

    Xiao et al. measure the perceptual distance in a pretrained VGG; no pretrained weights can
    be downloaded here, so we use random convolutional features, which still capture local
    image structure beyond single pixels (He, Wang & Hopcroft, NeurIPS 2016). Seeded, so every
    client gets the same network; its weights never train.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1),
            nn.ReLU(),
        )
    return net.requires_grad_(False)


def perceptual_distance(features: nn.Sequential, x_rec: Tensor, x: Tensor) -> Tensor:
    """Mean over the ReLU outputs of ``features`` of the MSE between the two images' activations."""
    distances = []
    a, b = x_rec, x
    for layer in features:
        a, b = layer(a), layer(b)
        if isinstance(layer, nn.ReLU):
            distances.append(F.mse_loss(a, b))
    return torch.stack(distances).mean()


@register_defense("arl")
class ARL(AdversarialDefense):
    """Adversarial reconstruction learning (Xiao et al., AAAI 2020).

    The encoder minimises the negative pixel reconstruction loss (``defense.arl-loss = "pixel"``)
    or the negative perceptual distance (``"perceptual"``) of the simulated adversary's
    reconstruction; the adversary itself always minimises the pixel MSE, the attack the paper
    evaluates.
    """

    def __init__(self, cfg: Config, shapes: Shapes) -> None:
        super().__init__(cfg, shapes)
        self.features = random_features(shapes.input[0], cfg.run.seed) if cfg.defense.arl_loss == "perceptual" else None

    def privacy_term(self, x_rec: Tensor, x: Tensor) -> Tensor:
        """Negative pixel MSE, or negative perceptual distance."""
        if self.features is None:
            return -F.mse_loss(x_rec, x)
        return -perceptual_distance(self.features, x_rec, x)


@register_defense("noise_arl")
class NoiseARL(AdversarialDefense):
    """Noisy adversarial representation learning (Jeong et al., UAI 2023, paper ref. [19]).

    ARL with the negative pixel loss, played on features that carry Gaussian noise of std
    ``noise.sigma``: the simulated adversary trains on, and the encoder defends, the noisy
    features. Jeong et al. add this feature noise to the ARL pipeline for a better
    privacy-utility trade-off at a lower client-side cost. :class:`ARL` with the same noise
    plays on the noise-free features and only adds the noise afterwards.
    """

    requires_noise = True
    plays_on_noisy = True


@register_defense("ressfl")
class ResSFL(AdversarialDefense):
    """Attacker-aware training of ResSFL (Li et al., CVPR 2022, paper ref. [29]).

    As in the authors' code (``gan_loss_type = SSIM``): the simulated attacker maximises the
    SSIM of its reconstructions, and the encoder pays
    ``adversary-weight * max(SSIM - defense.ssim-threshold, 0)``, pushing the attacker's SSIM
    down to the threshold and no further, so the privacy term does not overwhelm the task.
    ResSFL's second stage, transferring this resistance from a source-task pretraining, is a
    matter of initialising the encoder from such a run and is not part of this module.
    """

    def __init__(self, cfg: Config, shapes: Shapes) -> None:
        super().__init__(cfg, shapes)
        self.threshold = cfg.defense.ssim_threshold

    def adversary_objective(self, x_rec: Tensor, x: Tensor) -> Tensor:
        """``1 - SSIM``: the attacker wants structurally faithful reconstructions."""
        return 1 - ssim(x_rec, x)

    def privacy_term(self, x_rec: Tensor, x: Tensor) -> Tensor:
        """Hinge on the attacker's SSIM above the threshold."""
        return F.relu(ssim(x_rec, x) - self.threshold)
