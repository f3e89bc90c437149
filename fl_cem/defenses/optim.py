"""An Adam optimizer that is an ``nn.Module``, so its state travels in its owner's ``state_dict``.

A defense's simulated adversary trains across many client steps; federated clients serialise
their whole state between messages and centralized runs checkpoint it. ``torch.optim.Adam``
keeps its moments outside any module, so a defense holding one would lose them (and restart
Adam's bias correction) on every round trip. Keeping the moments as buffers makes
``defense.state_dict()`` a plain tensor dict that restores training exactly, survives
``.to(device)``, and fits Flower's ``ArrayRecord``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn


class ModuleAdam(nn.Module):
    """Adam (Kingma & Ba 2015) without weight decay, with its state held in buffers.

    Computes the same update as ``torch.optim.Adam(params, lr, betas, eps)``. The parameters
    are referenced, not registered: they belong to the module being optimised, which registers
    them itself.
    """

    def __init__(
        self, params: Sequence[nn.Parameter], lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
    ) -> None:
        super().__init__()
        self.params = list(params)
        self.lr = lr
        self.betas = betas
        self.eps = eps
        for i, p in enumerate(self.params):
            self.register_buffer(f"exp_avg_{i}", torch.zeros_like(p))
            self.register_buffer(f"exp_avg_sq_{i}", torch.zeros_like(p))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.count = 0
        """``steps`` on the host: the bias correction and the defenses' schedules read it every
        step, and reading the buffer on a GPU would wait for the device each time."""

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop the gradients of the optimised parameters (always set to ``None``)."""
        for p in self.params:
            p.grad = None

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: object) -> None:
        """Load the buffers, and the host step count from the loaded (usually CPU) ``steps``."""
        super()._load_from_state_dict(state_dict, prefix, *args)  # type: ignore[arg-type]
        if prefix + "steps" in state_dict:
            self.count = int(state_dict[prefix + "steps"])

    @torch.no_grad()
    def step(self) -> None:
        """One Adam update of every parameter that has a gradient."""
        self.count += 1
        self.steps.fill_(self.count)
        t = self.count
        beta1, beta2 = self.betas
        step_size = self.lr / (1 - beta1**t)
        root_correction = math.sqrt(1 - beta2**t)
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            exp_avg = getattr(self, f"exp_avg_{i}")
            exp_avg_sq = getattr(self, f"exp_avg_sq_{i}")
            exp_avg.lerp_(p.grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
            p.addcdiv_(exp_avg, (exp_avg_sq.sqrt() / root_correction).add_(self.eps), value=-step_size)
