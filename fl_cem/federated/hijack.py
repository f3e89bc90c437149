"""Feature-space hijacking (FSHA), a malicious split-learning server (Pasquini et al., "Unleashing
the Tiger: Inference Attacks on Split Learning", CCS 2021).

An honest server returns dL/dz of its classifier. This one returns, for every batch it serves,
the gradient of a critic's score on the client's smashed data ``z``. The critic ``D`` is trained
as a WGAN-GP critic (Gulrajani et al. 2017) to score the client's smashed data high and the
features its own pilot encoder ``f~`` gives its public images low, so the client, which only
applies the gradient it is given, moves its encoder's outputs towards ``f~``'s feature space. At
the same time the server trains ``f~`` and a decoder ``f~^-1`` as an autoencoder on the public
images; once the two spaces agree, ``f~^-1`` inverts what the client sends. Per served batch
there is one autoencoder step and one critic step, and all three gradients (the client's, the
autoencoder's, the critic's) come from the networks as the batch found them, as in the authors'
``FSHA.train_step`` (one gradient tape; github.com/pasquini-dario/SplitNN_FSHA). The server's
public images are the test split, which no client trains on: the authors' ``load_mnist`` gives
the client MNIST's training set and the server its test set.

Clients stepping SGD with momentum sum about ten critics' gradients in their buffers; on CIFAR-10
that made their features run away from the pilot's, and ``malicious.cancel-momentum`` subtracts
the part their buffer already holds (:meth:`FeatureSpaceHijack._cancel_momentum`). Clients train
on random crops of zero-padded images; ``malicious.augment`` crops and flips the server's public
batches the same way, without which the pilot's decoder never learns to draw the black borders
and the critic tells the two feature sets apart by them (on CIFAR-10 the difference between
failing and beating the mean image through the sigmoid bottleneck).

The client's protocol is unchanged (smashed data up, a gradient of z's shape down). The
server still steps its decoder on the hijacked features, so the accuracy it reports stays
plausible; its gradient is what is dropped.

:meth:`FeatureSpaceHijack.score` is the researcher's measurement, not part of the attack: at a
round's end it inverts the smashed data of the round's last batches and compares it with the
images those batches held, replayed from the client's deterministic data order, next to
the best guess that ignores the smashed data (those images' mean image).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
from torch import Tensor
from torch.nn import functional as F

from fl_cem.attacks.common import as_images, map_batches
from fl_cem.attacks.evaluate import beats_mean_image
from fl_cem.attacks.gan import ADAM_BETAS, gradient_penalty
from fl_cem.attacks.metrics import mean_guess_mse, mse
from fl_cem.attacks.networks import decoding_network, feature_critic
from fl_cem.config import Config
from fl_cem.data import BatchLoader
from fl_cem.data.loader import augment_padding, crop_and_flip
from fl_cem.models.split import build_split_model
from fl_cem.training.layout import model_format, place
from fl_cem.training.server import Source

INVERSE_BLOCKS = 2
"""Residual blocks of ``f~^-1`` (S.9's decoding network has 8): it trains one step per served
batch on the server's critical path, and the authors' MNIST decoder is small too."""

SEED_OFFSET = 104_729
"""Added to ``run.seed`` for the attacker's initialisation and batches: its pilot must not start from the client's weights."""

MIN_RATE_SHARE = 0.01
"""``malicious.follow-rate`` treats rates below this share of ``train.lr`` as this share."""

Replay = Callable[[int, int, int], Tensor]
"""``replay(client, epoch, batch)``: the images (B, C, H, W) in [0, 1] of one served batch, replayed
from the client's data order (the measurement's ground truth; the attack never sees it)."""


class FeatureSpaceHijack:
    """Pilot encoder, its decoder and the smashed-space critic of a hijacking server, with their optimizers.

    Parameters
    ----------
    cfg : Config
        The run's config: ``malicious.*``, the client architecture (``model``, the public
        design the pilot copies with its own weights) and ``noise.sigma`` (added to the pilot's
        features, as the wire adds it to the client's).
    public : Tensor
        The server's public images (N, C, H, W), uint8 or float in [0, 1].
    num_classes : int
        Classes of the task (the model code builds a decoder half, which is dropped).
    natural : bool
        Whether the task's images may be flipped (the clients' augmentation, for ``malicious.augment``).
    smashed_shape : tuple[int, int, int]
        ``(c, h, w)`` of what the clients send.
    device : torch.device
        Where the networks train.
    """

    def __init__(
        self, cfg: Config, public: Tensor, num_classes: int, natural: bool, smashed_shape: tuple[int, int, int], device: torch.device
    ) -> None:
        self.cfg = cfg.malicious
        self.peak_lr = cfg.train.lr
        self.sigma = cfg.noise.sigma
        self.augment = cfg.malicious.augment and cfg.data.augment
        self.flip = natural
        self.device = device
        self.seed = cfg.run.seed + SEED_OFFSET
        self.public = as_images(public, device)
        input_shape: tuple[int, int, int] = tuple(self.public.shape[1:])  # type: ignore[assignment]
        self.padding = augment_padding(input_shape)
        mean = tuple(self.public.mean(dim=(0, 2, 3)).tolist())
        std = tuple(self.public.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist())
        with torch.random.fork_rng():
            torch.manual_seed(self.seed)
            model = build_split_model(cfg.model, input_shape, num_classes, mean, std)
            self.pilot = place(model.encoder, device, model_format(device, input_shape))
            self.inverse = decoding_network(smashed_shape, input_shape, blocks=INVERSE_BLOCKS).to(device)
            self.critic = feature_critic(smashed_shape).to(device)
            self.sent_critic = feature_critic(smashed_shape).to(device)
            """Spare critic, loaded with a client's :attr:`last_sent` weights for momentum cancelling."""
        self.momentum = cfg.train.momentum if self.cfg.cancel_momentum else 0.0
        self.last_sent: dict[int, dict[str, Tensor]] = {}
        """Per client, the critic weights its last sent gradient came from (``malicious.cancel-momentum``)."""
        self.optimizer = torch.optim.Adam([*self.pilot.parameters(), *self.inverse.parameters()], lr=self.cfg.lr)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=self.cfg.critic_lr, betas=ADAM_BETAS)
        self.steps = 0
        self.sums = {"autoencoder_mse": 0.0, "critic_distance": 0.0}
        self.round_steps = 0
        self.kept: list[tuple[Tensor, Source]] = []
        """The round's last served batches (at least ``malicious.scored`` rows), for :meth:`score`."""

    def start_round(self) -> None:
        """Forget the last round's batches and sums: :meth:`score` measures one round."""
        self.kept.clear()
        self.sums = dict.fromkeys(self.sums, 0.0)
        self.round_steps = 0

    def step(self, z: Tensor, source: Source, lr: float) -> Tensor:
        """One FSHA step on a served batch ``z``; returns the gradient the client is sent instead of dL/dz.

        The client's loss is the critic's mean score of its smashed data, whose gradient points
        to where the critic scores the pilot's features. ``lr`` is the schedule's rate at this
        step, which ``malicious.follow-rate`` divides the gradient by (:meth:`scale`). All
        randomness (public batch, pilot noise, penalty interpolates) is drawn from a seed of the
        step's number, so a resumed run repeats it and the run's other random streams are left
        alone.
        """
        self._keep(z, source)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            step_seed = self.seed * 1_000_003 + self.steps
            torch.manual_seed(step_seed)
            x = self.public[torch.randint(len(self.public), (len(z),), device=self.device)]
            if self.augment:
                x = crop_and_flip(x, torch.Generator().manual_seed(step_seed), self.padding, self.flip)
            z_public = self.pilot(x)
            z_public = z_public + self.sigma * torch.randn_like(z_public) if self.sigma > 0 else z_public
            autoencoder = F.mse_loss(self.inverse(z_public), x)
            self.optimizer.zero_grad(set_to_none=True)
            autoencoder.backward()
            self.optimizer.step()

            private = z.detach().float().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.critic(private).mean(), private)
            grad = self._cancel_momentum(grad, private, source[0])

            public_features = z_public.detach()
            distance = self.critic(private.detach()).mean() - self.critic(public_features).mean()
            critic_loss = -distance + self.cfg.gradient_penalty * gradient_penalty(self.critic, private.detach(), public_features)
            self.critic_optimizer.zero_grad(set_to_none=True)
            critic_loss.backward()
            self.critic_optimizer.step()
        self.steps += 1
        self.round_steps += 1
        self.sums["autoencoder_mse"] += autoencoder.item()
        self.sums["critic_distance"] += distance.item()
        return (self.scale(lr) * grad).to(z.dtype)

    def scale(self, lr: float) -> float:
        """The factor on the critic's gradient: ``malicious.gradient-scale``, with ``follow-rate``
        times ``train.lr / lr`` (``lr`` at least ``train.lr`` / 100: the warm-up's first steps
        and the schedule's end would otherwise send gradients without bound)."""
        if not self.cfg.follow_rate:
            return self.cfg.gradient_scale
        return self.cfg.gradient_scale * self.peak_lr / max(lr, self.peak_lr * MIN_RATE_SHARE)

    def _cancel_momentum(self, grad: Tensor, private: Tensor, client: int) -> Tensor:
        """``grad - momentum * g'``, ``g'`` the critic of ``client``'s last batch at this batch; records this critic for its next.

        A client stepping SGD with momentum ``m`` moves by its buffer ``v_t = m v_{t-1} + J^T g_t``.
        Sending ``g_t = d_t - m d'_t`` (``d`` this critic's gradient, ``d'`` the last-sent
        critic's, both at this batch's ``z``) keeps ``v_t`` near ``J^T d_t``: the batch-averaged
        ``J^T d'`` estimates what the last step added to the buffer. Without it the buffer sums
        about ten steps of critics the client has already moved past, and on CIFAR-10 the
        clients' features ran away from the pilot's (README).
        """
        if self.momentum == 0.0:
            return grad
        last = self.last_sent.get(client)
        self.last_sent[client] = {key: value.detach().clone() for key, value in self.critic.state_dict().items()}
        if last is None:
            return grad
        self.sent_critic.load_state_dict(last)
        (previous,) = torch.autograd.grad(self.sent_critic(private).mean(), private)
        return grad - self.momentum * previous

    def _keep(self, z: Tensor, source: Source) -> None:
        """Hold the batch for :meth:`score`, dropping the oldest once the rest still cover ``malicious.scored`` rows."""
        self.kept.append((z.detach().cpu(), source))
        while sum(len(k) for k, _ in self.kept[1:]) >= self.cfg.scored:
            self.kept.pop(0)

    @torch.no_grad()
    def invert(self, z: Tensor) -> Tensor:
        """``f~^-1(z)``: images in [0, 1] from smashed data, in eval mode (restored after)."""
        was = self.inverse.training
        self.inverse.eval()
        try:
            return map_batches(self.inverse, z.float(), 256, self.device)
        finally:
            self.inverse.train(was)

    def score(self, replay: Replay) -> dict[str, Any]:
        """Invert the round's last ``malicious.scored`` intercepted rows and score them against their images.

        Returns
        -------
        dict[str, Any]
            ``inversion_mse``, ``mean_image_mse`` (guessing every image as the scored images' own
            mean, the best guess that ignores ``z``: lower than the public images' mean, which
            misses the clients' augmentation, so the comparison favours no attack), their ratio
            ``mse_to_mean_image``, ``failed`` (not below :data:`fl_cem.attacks.evaluate.MEAN_IMAGE_MARGIN`
            of the mean image's), ``scored`` rows, and the round's mean ``autoencoder_mse`` and
            ``critic_distance`` (the critic's Wasserstein estimate between the client's and the
            pilot's features: it falls as the hijack takes hold). Empty when nothing was served.
        """
        if not self.kept:
            return {}
        z = torch.cat([k for k, _ in self.kept])[-self.cfg.scored :]
        truth = torch.cat([replay(client, epoch, batch).to(self.device) for _, (client, _, epoch, batch) in self.kept])[-self.cfg.scored :]
        inversion = mse(self.invert(z), truth)
        baseline = mean_guess_mse(truth, truth)
        metrics: dict[str, Any] = {
            "inversion_mse": inversion,
            "mean_image_mse": baseline,
            "mse_to_mean_image": inversion / baseline,
            "scored": float(len(z)),
            **{key: total / max(self.round_steps, 1) for key, total in self.sums.items()},
        }
        metrics["failed"] = not beats_mean_image(metrics)
        return metrics

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to serve the next round exactly as an uninterrupted one would
        (``tests/test_fsha.py`` checks it bit for bit through a killed ServerApp).

        The three networks (with their batch-norm statistics), both Adam states, the step
        count, which seeds every random draw of :meth:`step`, and the critic weights each
        client was last sent from (``malicious.cancel-momentum``; absent in older checkpoints).
        Not stored: ``kept``, ``sums`` and ``round_steps`` belong to one round (:meth:`start_round`
        clears them) and the server checkpoints only between rounds, after :meth:`score`; the
        public images come from the config.
        """
        return {
            "pilot": self.pilot.state_dict(),
            "inverse": self.inverse.state_dict(),
            "critic": self.critic.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "critic_optimizer": self.critic_optimizer.state_dict(),
            "steps": self.steps,
            "last_sent": self.last_sent,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pilot.load_state_dict(state["pilot"])
        self.inverse.load_state_dict(state["inverse"])
        self.critic.load_state_dict(state["critic"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        self.steps = int(state["steps"])
        self.last_sent = dict(state.get("last_sent", {}))


def replay_from(loaders: Mapping[int, BatchLoader]) -> Replay:
    """:data:`Replay` from each client's training loader by partition id (the loader is set to the batch's epoch)."""

    def replay(client: int, epoch: int, batch: int) -> Tensor:
        loader = loaders[client]
        loader.set_epoch(epoch)
        return loader.batch(batch)[0]

    return replay


def round_line(metrics: Mapping[str, Any]) -> str:
    """The round log line's part on the hijack: inversion MSE against the mean image's, and whether it beats it."""
    if not metrics:
        return ""
    verdict = "fails" if metrics["failed"] else "beats it"
    return f" | FSHA inversion MSE {metrics['inversion_mse']:.4f} (mean image {metrics['mean_image_mse']:.4f}: {verdict})"
