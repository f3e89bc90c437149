"""The one training step of split learning, in three pieces that the wire can sit between.

Centralized training calls :func:`train_step`, which is exactly::

    fwd = client.forward(x, seed)                        # client: encoder -> defense -> + noise
    grad_z, m = server.step(fwd.z, y, at)                # server: decoder forward/backward/step
    client.step(x, y, seed, grad_z, at, fwd)             # client: chain rule + CEM + defense, step

(:class:`fl_cem.training.client.Client`, :class:`fl_cem.training.server.Server`). The federated
path calls the same three methods on either side of a Flower message, without ``fwd``: the
client cannot keep an autograd graph between messages, so it sends ``z`` computed without a
graph (``client.smash``) and ``client.step`` recomputes the forward pass from the same batch and
seed: all randomness of the client forward (noise, dropout) is drawn from a per-batch seed,
and batch-norm running statistics are frozen during the recomputation, which makes the two
paths compute the same numbers in the same order.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterable, Iterator, NamedTuple

import torch
from torch import Tensor, nn

from fl_cem.defenses.base import Defense
from fl_cem.training.schedule import Position

if TYPE_CHECKING:
    from fl_cem.training.client import Client
    from fl_cem.training.server import Server

Metrics = dict[str, Tensor]


def batch_seed(seed: int, epoch: int, batch: int, client: int = 0) -> int:
    """Seed of one batch's client-side randomness; a pure function so a batch can be recomputed."""
    return (seed * 1_000_003 + client * 10_007 + epoch) * 1_000_033 + batch


@contextmanager
def frozen_batchnorm_stats(module: nn.Module) -> Iterator[None]:
    """Run a forward pass in train mode without touching batch-norm running statistics.

    With momentum 0 the running mean/var update is ``(1 - 0) * old + 0 * batch``: the pass uses
    batch statistics exactly as the first pass did, but the stored statistics move only once.
    """
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None) for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(norms, saved):
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


class Forward(NamedTuple):
    """The three tensors of one client forward pass."""

    z_raw: Tensor
    """The encoder's output."""
    z_hat: Tensor
    """After the defense's transform (dropout, top-k), before noise."""
    z: Tensor
    """``z_hat`` plus noise: the smashed data on the wire."""


def forward(encoder: nn.Module, defense: Defense, x: Tensor, sigma: float, seed: int) -> Forward:
    """Client forward: encoder, the defense's transform, then ``z = z_hat + eps``.

    Every random draw (noise, dropout masks) comes from ``seed`` inside a forked RNG, so the
    same call gives the same tensors again and leaves the global RNG untouched.
    """
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        z_raw = encoder(x)
        z_hat = defense.transform(z_raw)
        z = z_hat + sigma * torch.randn_like(z_hat) if sigma > 0 else z_hat
    return Forward(z_raw, z_hat, z)


def train_step(client: Client, server: Server, x: Tensor, y: Tensor, seed: int, at: Position) -> Metrics:
    """One split-learning step on a batch, client and server in one process, at ``at``'s learning rate."""
    fwd = client.forward(x, seed)
    grad_z, metrics = server.step(fwd.z, y, at)
    metrics.update(client.step(x, y, seed, grad_z, at, fwd))
    return metrics


def evaluate(client: Client, server: Server, batches: Iterable[tuple[Tensor, Tensor]], seed: int) -> dict[str, float]:
    """Accuracy and loss of the split model with the client's noise on, as deployed: the one
    evaluation of every path (a federated client smashes, the server classifies what it sent)."""
    return server.classify(client.smashed(batches, seed))
