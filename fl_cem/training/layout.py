"""Memory layout of the models and of the smashed data, per device.

On the CPU, oneDNN's channels-last convolution, pooling and batch-norm kernels are faster than
the default layout's (``benchmarks/centralized_throughput.py`` measures both side by side; the
encoder's full-resolution layers gain most, which also makes a federated client's recomputed
forward pass cheaper). CUDA keeps the default layout, where this was not measured.

The layout also decides the order of float reductions (batch norm), so the two sides of the
wire put tensors back into it: smashed data arrives at the server, and gradients at the client,
as plain contiguous arrays, and must be computed on exactly as in a centralized step.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


CPU_FORMAT = torch.channels_last
"""The CPU layout; ``benchmarks/centralized_throughput.py`` sets it to compare layouts."""


def model_format(device: torch.device) -> torch.memory_format:
    return CPU_FORMAT if device.type == "cpu" else torch.contiguous_format


def place(module: nn.Module, device: torch.device) -> nn.Module:
    """Move ``module`` to ``device`` in that device's layout (only 4-d weights change layout)."""
    return module.to(device, memory_format=model_format(device))


def in_model_format(t: Tensor) -> Tensor:
    """``t`` (a batch of feature maps) in the layout the models use on its device."""
    return t.contiguous(memory_format=model_format(t.device)) if t.dim() == 4 else t
