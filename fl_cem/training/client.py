"""The client of split learning: the one object every path smashes, trains and saves a client with.

Centralized training, each federated client (:class:`fl_cem.federated.client_logic.SplitClient`
wraps one with its data cursor) and the attacker's victim hold a :class:`Client`, so what the
attacker inverts is computed by the same code that produced what crossed the wire.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterable, Iterator

import torch
from torch import Tensor, nn

from fl_cem.cem import ConditionalEntropy
from fl_cem.config import CEMConfig
from fl_cem.defenses.base import Defense
from fl_cem.training.layout import in_format
from fl_cem.training.schedule import Position, Schedule
from fl_cem.training.step import Forward, Metrics, forward, frozen_batchnorm_stats


def global_refit_due(cem: CEMConfig, epoch: int) -> bool:
    """Whether the server refits the global federation's mixture before epoch ``epoch``
    (``cem.federation = global``): the schedule of :meth:`Client.refit_due`, for the mixture
    that no client fits alone. The server loop asks it at a round's start, a client within one."""
    return cem.federation == "global" and cem.refits_at(epoch)


class Client:
    """Encoder, defense, optimizer, CEM statistics (with the one refit decision) and learning-rate schedule of one client."""

    def __init__(
        self,
        encoder: nn.Module,
        defense: Defense,
        optimizer: torch.optim.Optimizer,
        sigma: float,
        memory_format: torch.memory_format,
        cem: ConditionalEntropy,
        schedule: Schedule,
        kind: str = "centralized",
    ) -> None:
        self.encoder = encoder
        self.defense = defense
        self.optimizer = optimizer
        self.sigma = sigma
        self.memory_format = memory_format
        """The encoder's layout (``fl_cem/training/layout.py``); gradients from the server are put into it."""
        self.cem = cem
        """Mixture statistics; the CEM loss is added only when ``cem.cfg.lam > 0``."""
        self.schedule = schedule
        self.kind = kind
        """``centralized`` (the whole training split) or ``federated`` (one partition of it)."""

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The one client schema: centralized checkpoints, ``context.state``, server checkpoints, the attacker."""
        return {
            "encoder": self.encoder.state_dict(),
            "defense": self.defense.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "cem": self.cem.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.encoder.load_state_dict(state["encoder"])
        self.defense.load_state_dict(state["defense"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.cem.load_state_dict(state["cem"])

    # ------------------------------------------------------------------ forward
    def forward(self, x: Tensor, seed: int) -> Forward:
        """Encoder, defense transform and noise from ``seed`` (autograd on when the caller allows it)."""
        return forward(self.encoder, self.defense, x, self.sigma, seed)

    def smash(self, x: Tensor, seed: int) -> Tensor:
        """The smashed data ``z`` of a batch, without a graph: what the client sends."""
        with torch.no_grad():
            return self.forward(x, seed).z

    @contextmanager
    def deployed(self, frozen: bool = False) -> Iterator[None]:
        """Encoder and defense in eval mode for the block (evaluation, CEM refits, the attacker), then restored.

        ``frozen`` also stops the weights requiring gradients for the block: the attacker
        differentiates through the client to its input (rMLE), never to the weights.
        """
        was = self.encoder.training, self.defense.training
        params = [*self.encoder.parameters(), *self.defense.parameters()] if frozen else []
        grads = [p.requires_grad for p in params]
        self.encoder.eval()
        self.defense.eval()
        for p in params:
            p.requires_grad_(False)
        try:
            yield
        finally:
            self.encoder.train(was[0])
            self.defense.train(was[1])
            for p, grad in zip(params, grads):
                p.requires_grad_(grad)

    def smashed(self, batches: Iterable[tuple[Tensor, Tensor]], seed: int) -> Iterator[tuple[Tensor, Tensor]]:
        """Deployed smashed data and labels of each batch, noise on (batch ``i`` drawn from ``seed + i``)."""
        with self.deployed():
            for i, (x, y) in enumerate(batches):
                yield self.smash(x, seed + i), y

    @torch.no_grad()
    def features(self, batches: Iterable[tuple[Tensor, Tensor]], before_defense: bool = False) -> tuple[Tensor, Tensor]:
        """Noise-free features and labels of a whole pass, deployed (CEM refits): ``z_hat``, or the
        encoder's output ``z_raw`` with ``before_defense`` (``cem.before_defense``)."""
        with self.deployed():
            feats, labels = zip(*((self.encoder(x) if before_defense else self.defense.transform(self.encoder(x)), y) for x, y in batches))
        return torch.cat(feats), torch.cat(labels)

    def fittable_features(self, batches: Iterable[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        """The features a mixture is fitted on (``cem.before_defense`` picks ``z_raw`` or ``z_hat``).

        A federated client leaves out the classes it holds fewer than ``k`` samples of: on a
        label-skewed partition that is normal (their clusters get pi = 0 here, the other clients
        fit them), while centrally it is a configuration error that the fit reports.
        """
        z, y = self.features(batches, self.cem.cfg.before_defense)
        if self.kind == "centralized":
            return z, y
        keep = torch.bincount(y, minlength=self.cem.num_classes)[y] >= self.cem.cfg.clusters_per_class
        return z[keep], y[keep]

    def smashed_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of what the client sends for one image (without the batch dimension)."""
        device = next(self.encoder.parameters()).device
        with self.deployed():
            return tuple(self.smash(torch.zeros(1, *input_shape, device=device), 0).shape[1:])

    # ------------------------------------------------------------------ CEM schedule
    def refit_due(self, epoch: int) -> bool:
        """Whether this client refits its own mixture before epoch ``epoch``: the one refit decision.

        The schedule is :meth:`CEMConfig.refits_at`; who fits depends on the federation. Centrally,
        and with ``cem.federation = local``, each client fits its own mixture. With ``global`` the
        server merges the federation's at the same epochs (:func:`global_refit_due`) and the
        client only pauses for it.
        """
        if self.kind == "federated" and self.cem.cfg.federation == "global":
            return False
        return self.cem.cfg.refits_at(epoch)

    def refit(self, batches: Iterable[tuple[Tensor, Tensor]], seed: int) -> None:
        """Fit the mixture on the noise-free features of ``batches`` (Algorithm 1, line 5), k-means seeded by ``seed``."""
        z, y = self.fittable_features(batches)
        self.cem.refit(z, y, torch.Generator().manual_seed(seed))

    def epoch_start(self, epoch: int, batches: Iterable[tuple[Tensor, Tensor]], seed: int) -> bool:
        """Refit the mixture on ``batches`` when epoch ``epoch`` begins with a refit (:meth:`refit_due`,
        Algorithm 1, lines 4-5); returns whether it did. ``batches`` is iterated only then."""
        if not self.refit_due(epoch):
            return False
        self.refit(batches, seed)
        return True

    # ------------------------------------------------------------------ training
    def step(self, x: Tensor, y: Tensor, seed: int, grad_z: Tensor, at: Position, fwd: Forward | None = None) -> Metrics:
        """Set ``at``'s learning rate, recompute the forward pass, back-propagate the server's gradient
        plus the client's own losses, step.

        ``fwd`` is the forward pass whose ``z`` the server differentiated, when the caller still
        holds its graph (centralized training). A federated client cannot keep a graph between
        messages: it recomputes the pass from the batch and its ``seed`` with batch-norm statistics
        frozen, which gives the numbers the smashing pass gave (:func:`frozen_batchnorm_stats`).
        ``grad_z`` is put into the encoder's layout: from the wire it arrives as a plain array.

        ``(z * grad_z).sum()`` has gradient ``grad_z`` with respect to ``z``, so its backward pass is
        the chain rule through the encoder. CEM (Eq. 8: L = L_D + lambda * L_C) and defense terms
        are computed here, on the client, and reach only the encoder.
        """
        lr = self.schedule.apply(self.optimizer, at)
        if fwd is None:
            with frozen_batchnorm_stats(self.encoder):
                fwd = self.forward(x, seed)
        grad_z = in_format(grad_z.to(fwd.z), self.memory_format)
        z_hat, z = fwd.z_hat, fwd.z
        loss = (z * grad_z).sum()
        metrics: Metrics = {}
        defense_loss = self.defense.client_loss(x, z_hat, z, y)
        if defense_loss is not None:
            loss = loss + defense_loss
            metrics["defense_loss"] = defense_loss.detach()
        if self.cem.cfg.lam > 0 and self.cem.fitted:
            cem_loss = self.cem.loss(fwd.z_raw if self.cem.cfg.before_defense else z_hat, y)
            loss = loss + self.cem.effective_lambda(lr) * cem_loss
            metrics["cem_loss"] = cem_loss.detach()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        for key, value in self.defense.adversary_step(x, z_hat.detach(), z.detach()).items():
            metrics[f"adversary_{key}"] = value
        return metrics
