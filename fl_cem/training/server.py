"""The server of split learning: the decoder every path trains and classifies with."""

from __future__ import annotations

from typing import Any, Iterable, Protocol

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from fl_cem.training.layout import in_format
from fl_cem.training.schedule import Position, Schedule
from fl_cem.training.step import Metrics


Source = tuple[int, int, int, int]
"""Where a served batch came from: client, round, epoch and batch index in that epoch."""


class Recorder(Protocol):
    """What a curious server keeps of the smashed data it serves (:class:`fl_cem.federated.recorder.Interceptor`)."""

    def offer(self, z: Tensor, labels: Tensor, client: int, round_: int, epoch: int, batch: int) -> None: ...


class Server:
    """The decoder, its optimizer, learning-rate schedule and, on a curious server, a recorder."""

    def __init__(
        self, decoder: nn.Module, optimizer: torch.optim.Optimizer, memory_format: torch.memory_format, schedule: Schedule, recorder: Recorder | None = None
    ) -> None:
        self.decoder = decoder
        self.optimizer = optimizer
        self.memory_format = memory_format
        """The decoder's layout (``fl_cem/training/layout.py``); smashed data is put into it."""
        self.schedule = schedule
        self.recorder = recorder
        """Offered every batch :meth:`step` serves with its source (federated runs: ``attack.intercept``); ``None`` centrally."""

    def state_dict(self) -> dict[str, Any]:
        return {"decoder": self.decoder.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decoder.load_state_dict(state["decoder"])
        self.optimizer.load_state_dict(state["optimizer"])

    def step(self, z: Tensor, y: Tensor, at: Position, source: Source | None = None) -> tuple[Tensor, Metrics]:
        """Classify the smashed data, step the decoder at ``at``'s rate, return dL/dz for the client.

        What the server was sent is offered to its recorder first, with its ``source``: what
        the attacker later inverts is exactly what this step served.

        ``z`` is put into the decoder's layout first: smashed data that crossed the wire arrives as
        a plain contiguous array, and a layout-sensitive first layer (batch norm reduces in layout
        order) must compute on it exactly as on the encoder's output. The returned gradient is in
        that layout too, which is the one the client puts a gradient from the wire back into.
        """
        if self.recorder is not None and source is not None:
            self.recorder.offer(z, y, *source)
        self.schedule.apply(self.optimizer, at)
        z = in_format(z.detach(), self.memory_format).requires_grad_(True)
        logits = self.decoder(z)
        loss = F.cross_entropy(logits, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        assert z.grad is not None
        metrics = {
            "loss": loss.detach(),
            "correct": (logits.detach().argmax(1) == y).sum(),
            "count": torch.tensor(y.numel()),
        }
        return z.grad, metrics

    @torch.no_grad()
    def classify(self, batches: Iterable[tuple[Tensor, Tensor]]) -> dict[str, float]:
        """Accuracy and loss of the decoder on smashed batches, in eval mode (restored after)."""
        was = self.decoder.training
        self.decoder.eval()
        loss = correct = count = 0.0
        try:
            for z, y in batches:
                logits = self.decoder(z)
                loss += F.cross_entropy(logits, y, reduction="sum").item()
                correct += (logits.argmax(1) == y).sum().item()
                count += y.numel()
        finally:
            self.decoder.train(was)
        return {"accuracy": correct / max(count, 1), "loss": loss / max(count, 1)}
