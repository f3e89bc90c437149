"""The one learning-rate schedule: a pure function of the step's position, used by every party."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from fl_cem.config import TrainConfig

AUTHORS_MILESTONES = (60 / 240, 120 / 240, 180 / 240, 210 / 240)
"""``train.schedule = "multistep"``: the CEM authors' MultiStep milestones, epochs 60, 120, 180 and
210 of 240 (``model_training_paral_pruning.py`` lines 516 and 528-533), as fractions of the run so
a shorter run keeps their shape."""
AUTHORS_GAMMA = 0.2


def lr_at(cfg: TrainConfig, epoch: int, total_epochs: int, batch: int = 0, batches: int = 1) -> float:
    """Learning rate of step ``batch`` of ``batches`` in ``epoch`` (0-based): a pure function, resume-safe.

    The decay (``train.schedule``) moves once per epoch; the linear warm-up over the first
    ``train.warmup-epochs`` moves every step, as in the authors' code (one epoch), because SGD
    at full rate on a fresh batch-norm net overshoots: the first epoch's loss ends above
    ln(classes) without it (docs/FEDERATED.md).
    """
    progress = epoch / total_epochs
    if cfg.schedule == "cosine":
        lr = cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))
    elif cfg.schedule == "step":
        lr = cfg.lr * (0.1 ** sum(progress >= m for m in (0.5, 0.75)))
    elif cfg.schedule == "multistep":
        lr = cfg.lr * (AUTHORS_GAMMA ** sum(progress >= m for m in AUTHORS_MILESTONES))
    else:
        lr = cfg.lr
    position = epoch + (batch + 1) / batches
    if position < cfg.warmup_epochs:
        lr *= position / cfg.warmup_epochs
    return lr


class Position(NamedTuple):
    """Where a step sits in training: batch ``batch`` of ``batches`` in epoch ``epoch`` (0-based)."""

    epoch: int
    batch: int = 0
    batches: int = 1


@dataclass(frozen=True)
class Schedule:
    """:func:`lr_at` bound to a run's length; ``scale`` is a party's factor (``federated.encoder-lr-scale``).

    A client and a server each hold one and set their optimizer's rate from it before every
    step, so centralized training, each federated client and the server's decoder follow the
    same curve by construction.
    """

    cfg: TrainConfig
    total_epochs: int
    scale: float = 1.0

    def lr(self, at: Position) -> float:
        return self.scale * lr_at(self.cfg, at.epoch, self.total_epochs, at.batch, at.batches)

    def apply(self, optimizer: torch.optim.Optimizer, at: Position) -> float:
        """Set every parameter group's rate for the step at ``at``; returns it."""
        lr = self.lr(at)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr
