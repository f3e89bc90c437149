"""Sample-weighted averages of model states: SplitFed's FedAvg step outside Flower's records."""

from __future__ import annotations

import torch
from torch import Tensor


def average_states(states: list[dict[str, Tensor]], weights: list[float]) -> dict[str, Tensor]:
    """Weighted mean of floating-point entries, summed in float64; integer buffers (batch counts) from the first."""
    total = float(sum(weights))
    out = {}
    for key, first in states[0].items():
        if first.is_floating_point():
            mean = torch.zeros_like(first, dtype=torch.float64)
            for state, weight in zip(states, weights):
                mean += state[key].double() * (weight / total)
            out[key] = mean.to(first.dtype)
        else:
            out[key] = first.clone()
    return out
