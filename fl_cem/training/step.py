"""The one training step of split learning, in three pieces that the wire can sit between.

Centralized training calls :func:`train_step`, which is exactly::

    fwd = client_forward(client, x, seed)                # client: encoder -> defense -> + noise
    grad_z, m = decoder_step(server, fwd.z, y)           # server: decoder forward/backward/step
    encoder_step(client, x, y, fwd, grad_z, lr)          # client: chain rule + CEM + defense, step

The federated path calls the same three functions on either side of a Flower message. The
client cannot keep an autograd graph between messages, so it sends ``z`` computed without a
graph and later recomputes the forward pass from the same batch and seed: all randomness of
the client forward (noise, dropout) is drawn from a per-batch seed, and batch-norm running
statistics are frozen during the recomputation, which makes the two paths compute the same
numbers in the same order.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from fl_cem.cem import ConditionalEntropy
from fl_cem.defenses.base import Defense
from fl_cem.training.layout import in_format

Metrics = dict[str, Tensor]


@dataclass
class ClientParts:
    """What a client owns: its encoder, defense, optimizer and CEM statistics."""

    encoder: nn.Module
    defense: Defense
    optimizer: torch.optim.Optimizer
    sigma: float
    memory_format: torch.memory_format
    """The encoder's layout (``fl_cem/training/layout.py``); gradients from the server are put into it."""
    cem: ConditionalEntropy | None = None
    """Mixture statistics; the CEM loss is added only when ``cem.cfg.lam > 0``."""


@dataclass
class ServerParts:
    """What the server owns: the shared decoder and its optimizer."""

    decoder: nn.Module
    optimizer: torch.optim.Optimizer
    memory_format: torch.memory_format
    """The decoder's layout (``fl_cem/training/layout.py``); smashed data is put into it."""


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


def smash(encoder: nn.Module, defense: Defense, x: Tensor, sigma: float, seed: int) -> tuple[Tensor, Tensor]:
    """:func:`forward`'s ``z_hat`` and ``z``: what every path that only sends or inverts needs."""
    fwd = forward(encoder, defense, x, sigma, seed)
    return fwd.z_hat, fwd.z


def client_forward(client: ClientParts, x: Tensor, seed: int) -> Forward:
    """The client's forward pass with autograd on (centralized step, federated recompute)."""
    return forward(client.encoder, client.defense, x, client.sigma, seed)


def decoder_step(server: ServerParts, z: Tensor, y: Tensor) -> tuple[Tensor, Metrics]:
    """Server: classify the smashed data, step the decoder, return dL/dz for the client.

    ``z`` is put into the decoder's layout first: smashed data that crossed the wire arrives as
    a plain contiguous array, and a layout-sensitive first layer (batch norm reduces in layout
    order) must compute on it exactly as on the encoder's output. The returned gradient is in
    that layout too, which is the one the client puts a gradient from the wire back into.
    """
    z = in_format(z.detach(), server.memory_format).requires_grad_(True)
    logits = server.decoder(z)
    loss = F.cross_entropy(logits, y)
    server.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    server.optimizer.step()
    assert z.grad is not None
    metrics = {
        "loss": loss.detach(),
        "correct": (logits.detach().argmax(1) == y).sum(),
        "count": torch.tensor(y.numel()),
    }
    return z.grad, metrics


def encoder_step(client: ClientParts, x: Tensor, y: Tensor, fwd: Forward, grad_z: Tensor, lr: float) -> Metrics:
    """Client: back-propagate the server's gradient plus the client's own losses, then step.

    ``(z * grad_z).sum()`` has gradient ``grad_z`` with respect to ``z``, so its backward pass is
    the chain rule through the encoder. CEM (Eq. 8: L = L_D + lambda * L_C) and defense terms
    are computed here, on the client, and reach only the encoder.
    """
    z_hat, z = fwd.z_hat, fwd.z
    loss = (z * grad_z).sum()
    metrics: Metrics = {}
    defense_loss = client.defense.client_loss(x, z_hat, z, y)
    if defense_loss is not None:
        loss = loss + defense_loss
        metrics["defense_loss"] = defense_loss.detach()
    if client.cem is not None and client.cem.cfg.lam > 0 and client.cem.fitted:
        cem_loss = client.cem.loss(fwd.z_raw if client.cem.cfg.before_defense else z_hat, y)
        loss = loss + client.cem.effective_lambda(lr) * cem_loss
        metrics["cem_loss"] = cem_loss.detach()
    client.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    client.optimizer.step()
    for key, value in client.defense.adversary_step(x, z_hat.detach(), z.detach()).items():
        metrics[f"adversary_{key}"] = torch.tensor(value)
    return metrics


def train_step(client: ClientParts, server: ServerParts, x: Tensor, y: Tensor, seed: int) -> Metrics:
    """One split-learning step on a batch, client and server in one process."""
    fwd = client_forward(client, x, seed)
    grad_z, metrics = decoder_step(server, fwd.z, y)
    metrics.update(encoder_step(client, x, y, fwd, grad_z, current_lr(client.optimizer)))
    return metrics


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    """Learning rate of the first parameter group (the official CEM variant scales lambda by it)."""
    return float(optimizer.param_groups[0]["lr"])


@torch.no_grad()
def smashed_features(
    encoder: nn.Module, defense: Defense, batches: Iterator[tuple[Tensor, Tensor]], before_defense: bool = False
) -> tuple[Tensor, Tensor]:
    """Noise-free features and labels of a whole pass, in eval mode (CEM refits): ``z_hat``, or
    the encoder's output ``z_raw`` with ``before_defense`` (``cem.before_defense``)."""
    was = encoder.training, defense.training
    encoder.eval()
    defense.eval()
    try:
        feats, labels = zip(*((encoder(x) if before_defense else defense.transform(encoder(x)), y) for x, y in batches))
    finally:
        encoder.train(was[0])
        defense.train(was[1])
    return torch.cat(feats), torch.cat(labels)


@torch.no_grad()
def evaluate(
    encoder: nn.Module, defense: Defense, decoder: nn.Module, batches: Iterator[tuple[Tensor, Tensor]], sigma: float, seed: int
) -> dict[str, float]:
    """Accuracy and loss of the split model with the client's noise on, as deployed."""
    modules = (encoder, defense, decoder)
    was = [m.training for m in modules]
    for m in modules:
        m.eval()
    loss = correct = count = 0.0
    try:
        for i, (x, y) in enumerate(batches):
            _, z = smash(encoder, defense, x, sigma, seed + i)
            logits = decoder(z)
            loss += F.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
            count += y.numel()
    finally:
        for m, mode in zip(modules, was):
            m.train(mode)
    return {"accuracy": correct / max(count, 1), "loss": loss / max(count, 1)}
