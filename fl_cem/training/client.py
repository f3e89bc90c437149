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
from fl_cem.defenses.base import Defense
from fl_cem.training.schedule import Position, Schedule
from fl_cem.training.step import Forward, Metrics, forward


class Client:
    """Encoder, defense, optimizer, CEM statistics and learning-rate schedule of one client."""

    def __init__(
        self,
        encoder: nn.Module,
        defense: Defense,
        optimizer: torch.optim.Optimizer,
        sigma: float,
        memory_format: torch.memory_format,
        cem: ConditionalEntropy,
        schedule: Schedule,
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
        self.encoder.eval()
        self.defense.eval()
        try:
            yield
        finally:
            self.encoder.train(was[0])
            self.defense.train(was[1])

    def smashed(self, batches: Iterable[tuple[Tensor, Tensor]], seed: int) -> Iterator[tuple[Tensor, Tensor]]:
        """Deployed smashed data and labels of each batch, noise on (batch ``i`` drawn from ``seed + i``)."""
        with self.deployed():
            for i, (x, y) in enumerate(batches):
        params = [*self.encoder.parameters(), *self.defense.parameters()] if frozen else []
        grads = [p.requires_grad for p in params]
                yield self.smash(x, seed + i), y

        for p in params:
            p.requires_grad_(False)
    @torch.no_grad()
    def features(self, batches: Iterable[tuple[Tensor, Tensor]], before_defense: bool = False) -> tuple[Tensor, Tensor]:
        """Noise-free features and labels of a whole pass, deployed (CEM refits): ``z_hat``, or the
        encoder's output ``z_raw`` with ``before_defense`` (``cem.before_defense``)."""
        with self.deployed():
            for p, grad in zip(params, grads):
                p.requires_grad_(grad)
            feats, labels = zip(*((self.encoder(x) if before_defense else self.defense.transform(self.encoder(x)), y) for x, y in batches))
        return torch.cat(feats), torch.cat(labels)

    def smashed_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of what the client sends for one image (without the batch dimension)."""
        device = next(self.encoder.parameters()).device
        with self.deployed():
            return tuple(self.smash(torch.zeros(1, *input_shape, device=device), 0).shape[1:])

    # ------------------------------------------------------------------ training
    def step(self, x: Tensor, y: Tensor, fwd: Forward, grad_z: Tensor, at: Position) -> Metrics:
        """Back-propagate the server's gradient plus the client's own losses, then step at ``at``'s rate.

        ``(z * grad_z).sum()`` has gradient ``grad_z`` with respect to ``z``, so its backward pass is
        the chain rule through the encoder. CEM (Eq. 8: L = L_D + lambda * L_C) and defense terms
        are computed here, on the client, and reach only the encoder.
        """
        lr = self.schedule.apply(self.optimizer, at)
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
            metrics[f"adversary_{key}"] = torch.tensor(value)
        return metrics
