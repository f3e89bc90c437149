"""Defenses that zero part of the smashed data before it leaves the client.

Both act whenever the client sends features, in training *and* in evaluation mode: the paper's
tables measure attacks on the features the client sends (Sec. 5.1), and He et al. (ACSAC 2019,
paper ref. [15]) propose dropout as an inference-time defense. Switching the mask off in
``eval()`` would hand the attacker (which smashes its auxiliary images in eval mode) and the
accuracy evaluation undefended features the deployed client never sends.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fl_cem.config import Config
from fl_cem.defenses.base import Defense, Shapes
from fl_cem.registry import register_defense


def dropout_mask(z: Tensor, p: float) -> Tensor:
    """Zero each element of ``z`` independently with probability ``p``; keep the rest unscaled.

    There is no ``1 / (1 - p)`` rescaling: the mask is on in training and at inference alike,
    so there is no train/test mismatch to correct, and the kept activations reach the server
    (and the attacker) exactly as the encoder computed them, as in the CEM authors' code.
    Random draws come from the global torch RNG, which the training step seeds per batch so
    that a recomputed forward pass draws the same mask.

    Parameters
    ----------
    z : Tensor
        Smashed data of any shape.
    p : float
        Drop probability in [0, 1).

    Returns
    -------
    Tensor
        ``z`` with about a fraction ``p`` of its elements set to 0.
    """
    return z * (torch.rand_like(z) >= p)


def topk_mask(z: Tensor, fraction: float) -> Tensor:
    """Keep the ``ceil(fraction * numel)`` largest-magnitude elements of each sample; zero the rest.

    Parameters
    ----------
    z : Tensor
        Smashed data (B, ...).
    fraction : float
        Share of each sample's elements kept, in (0, 1].

    Returns
    -------
    Tensor
        ``z`` with exactly k non-masked elements per sample (ties broken by ``torch.topk``).
    """
    flat = z.flatten(1)
    k = math.ceil(fraction * flat.shape[1])
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep.scatter_(1, flat.abs().topk(k, dim=1).indices, True)
    return (flat * keep).view_as(z)


@register_defense("dropout")
class Dropout(Defense):
    """Dropout on the smashed data with ``p = defense.dropout`` (He et al. [15]), in every mode."""

    def __init__(self, cfg: Config, shapes: Shapes) -> None:
        super().__init__(cfg, shapes)
        self.p = cfg.defense.dropout

    def transform(self, z_raw: Tensor) -> Tensor:
        """Drop elements in training and evaluation alike (see the module docstring for why)."""
        return dropout_mask(z_raw, self.p)


@register_defense("topk")
class TopK(Defense):
    """Top-k sparsification: each sample keeps its ``defense.topk`` share of largest activations."""

    def __init__(self, cfg: Config, shapes: Shapes) -> None:
        super().__init__(cfg, shapes)
        self.fraction = cfg.defense.topk

    def transform(self, z_raw: Tensor) -> Tensor:
        """Deterministic, so training and evaluation see the same pruning."""
        return topk_mask(z_raw, self.fraction)
