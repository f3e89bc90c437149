"""The conditional-entropy bound of Theorem 2 and the MSE bound of Theorem 1, as numbers to report.

Eq. 3 bounds ``H(x|z) >= H(x) - L_C`` with ``L_C`` of Eq. 7. ``H(x)`` of natural images is
unknown; the paper reports a "relative" value (Sec. 4: "a proper value is selected to replace
it"). We report two:

* ``hxz_relative = -L_C`` (``H(x) := 0``), the paper's relative conditional entropy;
* ``hxz_absolute = H_G - L_C`` with ``H_G = d_x / 2 * log(2 pi e v_x)``, the entropy of a
  Gaussian with the data's mean per-pixel variance ``v_x`` in [0, 1] pixel space. It is the
  largest entropy any distribution of that variance can have, and it makes Theorem 1 give
  exactly ``v_x`` when nothing leaks (``L_C = 0``): the MSE of always guessing the mean image.

Theorem 1 turns a conditional entropy into a lower bound on any attacker's per-pixel MSE,
``xi >= exp(2 H(x|z) / d_x) / (2 pi e)``; with ``H_G`` for ``H(x)`` this is
``v_x * exp(-2 L_C / d_x)``. Because ``H_G`` over-estimates ``H(x)``, the number is an estimate
of the bound, not a certificate.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

TWO_PI_E = 2.0 * math.pi * math.e


def mixture_bound(weights: Tensor, log_det: Tensor) -> Tensor:
    """``L_C`` of Eq. 7: ``sum_j pi_j (-log pi_j + 1/2 log(|Sigma_j + Sigma_p| / |Sigma_p|))``.

    Terms with ``pi_j = 0`` vanish (``0 log 0 = 0`` via ``torch.special.entr``); ``log_det``
    holds the per-component ratios from :func:`fl_cem.cem.covariance.log_det_ratio`.
    """
    spread = torch.where(weights > 0, weights * log_det, torch.zeros_like(log_det))
    return torch.special.entr(weights).sum() + 0.5 * spread.sum()


def gaussian_entropy(data_dim: int, data_var: float) -> float:
    """``d_x / 2 * log(2 pi e v_x)``: differential entropy (nats) of ``N(0, v_x I_{d_x})``."""
    if data_dim <= 0 or not data_var > 0:
        raise ValueError(f"need data_dim > 0 and data_var > 0; got {data_dim} and {data_var}")
    return 0.5 * data_dim * math.log(TWO_PI_E * data_var)


def mse_lower_bound(hxz: float, data_dim: int) -> float:
    """Theorem 1: the minimal per-pixel reconstruction MSE ``xi >= exp(2 H(x|z) / d_x) / (2 pi e)``."""
    if data_dim <= 0:
        raise ValueError(f"need data_dim > 0; got {data_dim}")
    return math.exp(2.0 * hxz / data_dim) / TWO_PI_E
