"""Memory layout of the models and of the smashed data.

On the CPU, oneDNN's channels-last convolution, pooling and batch-norm kernels beat the default
layout on CIFAR-sized images (``benchmarks/centralized_throughput.py`` measures both side by
side: x1.14 per training step, x1.24 in evaluation; cheaper encoder passes also make the
forward pass a federated client recomputes cheaper), but lose on tiny ones: two-epoch runs on the embedded 8x8
digits took 1.3-1.5x longer, side by side. So the CPU runs channels-last from 32x32 pixels up;
CUDA keeps the default layout, where this was not measured. ``randn_like`` and ``rand_like``
fill tensors in memory order, so with the same seed the noise and dropout masks of such CPU
runs differ from those of versions before this layout (runs still repeat exactly).

The layout also decides the order of float reductions (batch norm), so the two sides of the
wire put tensors back into it: smashed data arrives at the server, and gradients at the client,
as plain contiguous arrays, and must be computed on exactly as in a centralized step.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

CHANNELS_LAST_MIN_SIDE = 32


def model_format(device: torch.device, input_shape: tuple[int, ...]) -> torch.memory_format:
    """The layout for a model on ``device`` whose inputs are ``input_shape`` (C, H, W)."""
    if device.type == "cpu" and min(input_shape[1:]) >= CHANNELS_LAST_MIN_SIDE:
        return torch.channels_last
    return torch.contiguous_format


def place(module: nn.Module, device: torch.device, memory_format: torch.memory_format) -> nn.Module:
    """Move ``module`` to ``device`` in ``memory_format`` (its 4-d parameters and buffers change layout)."""
    return module.to(device, memory_format=memory_format)


def in_format(t: Tensor, memory_format: torch.memory_format) -> Tensor:
    """``t`` in ``memory_format`` when it is a batch of feature maps; other tensors as they are."""
    return t.contiguous(memory_format=memory_format) if t.dim() == 4 else t
