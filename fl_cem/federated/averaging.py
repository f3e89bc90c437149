"""Sample-weighted averages of model states: SplitFed's FedAvg step outside Flower's records."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def average_states(states: list[dict[str, Tensor]], weights: list[float]) -> dict[str, Tensor]:
    """Weighted mean of floating-point entries, summed in float64; integer buffers (batch counts) from the first.

    Pruning masks (PATROL's ``*_mask`` buffers) are not weights: averaging would leave fractional
    masks, so a weight stays only where every state kept it. The Flower strategy and the
    in-process reference both average here, so the two paths agree to the last bit.
    """
    total = float(sum(weights))
    out = {}
    for key, first in states[0].items():
        if key.endswith("_mask"):
            out[key] = torch.stack([state[key] for state in states]).amin(dim=0)
        elif first.is_floating_point():
            mean = torch.zeros_like(first, dtype=torch.float64)
            for state, weight in zip(states, weights):
                mean += state[key].double() * (weight / total)
            out[key] = mean.to(first.dtype)
        else:
            out[key] = first.clone()
    return out


BATCH_NORM_MOMENTUM = 0.1
"""PyTorch's default batch-norm momentum, which every model here keeps."""


def federated_momentum(clients: int, momentum: float = BATCH_NORM_MOMENTUM) -> float:
    """The batch-norm momentum under which the average of ``clients`` running statistics is the
    running statistic centralized training keeps.

    Centralized training moves its running mean by ``m`` towards every batch's mean. A wave of
    N clients (one batch each) then weighs the waves k back by ``(1 - m)^(N k) (1 - (1 - m)^N)``
    in all. Each client updating with ``m' = 1 - (1 - m)^N`` on its own batch, averaged with the
    others, gives each wave exactly that weight, since the update is linear and every client
    starts from the same average. Without it, a client holding one batch per epoch (N = 100
    digits) has moved its statistics only ``1 - 0.9^10 = 65 %`` of the way after ten epochs, and
    the averaged encoder evaluates with statistics of its initialisation. One client: ``m``.
    """
    return 1 - (1 - momentum) ** clients


def set_norm_momentum(module: nn.Module, momentum: float) -> None:
    """Set the momentum of every batch-norm layer of ``module``."""
    for layer in module.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            layer.momentum = momentum
