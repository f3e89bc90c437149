"""The conditional-entropy bound of Theorem 2 and the MSE bound of Theorem 1, as numbers to report.

Eq. 3 bounds ``H(x|z) >= H(x) - L_C`` with ``L_C`` of Eq. 7. ``H(x)`` of natural images is
unknown; the paper reports a "relative" value (Sec. 4: "a proper value is selected to replace
it"). We report:

* ``hxz_relative = -L_C`` (``H(x) := 0``), the paper's relative conditional entropy;
* ``hxz_absolute = H_G - L_C`` with ``H_G = d_x / 2 * log(2 pi e v_x)``, the entropy of an
  isotropic Gaussian with the data's mean per-pixel variance ``v_x`` in [0, 1] pixel space. It
  is the largest entropy any distribution of that total variance can have, and it makes
  Theorem 1 give exactly ``v_x`` when nothing leaks (``L_C = 0``): the MSE of always guessing
  the mean image;
* ``hxz_absolute_full = H_F - L_C`` with ``H_F`` the entropy of a Gaussian with the data's full
  (shrunk) pixel covariance, :func:`gaussian_entropy_full`. Neighbouring pixels are strongly
  correlated, so ``H_F`` is far below ``H_G`` (``H_F <= H_G`` always, AM-GM on the
  eigenvalues): a tighter over-estimate of ``H(x)``.

Theorem 1 turns a conditional entropy into a lower bound on any attacker's per-pixel MSE,
``xi >= exp(2 H(x|z) / d_x) / (2 pi e)``; with ``H_G`` for ``H(x)`` this is
``v_x * exp(-2 L_C / d_x)``. A Gaussian has the largest entropy of all distributions with its
covariance, so ``H_G >= H_F >= H(x)`` (up to the error of estimating the covariance), and an
over-estimate of ``H(x)`` over-estimates the bound: each MSE figure is an estimate of the bound,
not a certificate. A measured MSE below it does not refute Theorem 1; it says that the ``H(x)``
estimate is too high (and ``L_C``, a mixture fit, is an estimate too).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

TWO_PI_E = 2.0 * math.pi * math.e
COVARIANCE_SHRINKAGE = 0.01
"""``a`` of ``S = (1 - a) C + a v I`` in :func:`gaussian_entropy_full`. Ledoit & Wolf's (2004)
target ``v I`` keeps the trace, so ``H_F <= H_G`` still holds, and makes every eigenvalue at least
``a v``: ``log|S|`` is finite with fewer images than pixels or with constant pixels (digit
borders). Measured on CIFAR-10 (d = 3072): the ratio ``|S|^(1/d) / v`` is 0.026, 0.028, 0.029
from 2048, 4096, 8192 images with ``a = 0.01``, but 9.7e-4 and 1.5e-3 from 4096 and 8192 (and
singular from 2048) with ``a = 0``: the floor sets the many small eigenvalues, whose sample values
are biased low. The ratio is the full-covariance MSE bound over the isotropic one."""


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


def gaussian_entropy_full(samples: Tensor, shrinkage: float = COVARIANCE_SHRINKAGE) -> float:
    """``d / 2 log(2 pi e) + 1/2 log|S|``: entropy (nats) of a Gaussian with the samples' shrunk covariance.

    ``S = (1 - a) C + a v I`` with ``C`` the (maximum-likelihood) covariance of ``samples`` and
    ``v = tr(C) / d`` (see :data:`COVARIANCE_SHRINKAGE`). Computed in float64 from the
    eigenvalues of whichever of ``X^T X`` and ``X X^T`` is smaller (the others are 0), so
    ``N < d`` costs ``O(N^2 d)``. ``tr(S) = d v`` and AM-GM on its eigenvalues give
    ``log|S| <= d log v``: never above :func:`gaussian_entropy` of ``v``.

    Parameters
    ----------
    samples : Tensor
        ``(N, d)`` flattened images, ``N >= 1``, in [0, 1] pixel space.
    shrinkage : float
        ``a`` in [0, 1]; 0 gives the plain sample covariance, which needs ``N > d``.

    Returns
    -------
    float
        The entropy in nats.

    Raises
    ------
    ValueError
        ``shrinkage`` outside [0, 1], constant samples (``v = 0``), or a singular ``S``.
    """
    if not 0 <= shrinkage <= 1:
        raise ValueError(f"shrinkage must lie in [0, 1]; got {shrinkage}")
    x = samples.detach().to("cpu", torch.float64).flatten(1)
    n, dim = x.shape
    x = x - x.mean(0)
    gram = x.T @ x if dim <= n else x @ x.T
    eigen = torch.linalg.eigvalsh(gram / n).clamp_min(0)  # rounding makes zero eigenvalues slightly negative
    var = float(eigen.sum()) / dim
    if not var > 0:
        raise ValueError("the samples are constant: their covariance has no entropy")
    shrunk = (1 - shrinkage) * eigen + shrinkage * var
    zeros = dim - len(eigen)  # eigenvalues of C beyond the rank of X X^T, shrunk to a v
    if float(shrunk.min()) <= 0 or (zeros and shrinkage == 0):
        raise ValueError(f"the covariance of {n} samples in {dim} dimensions is singular: use shrinkage > 0")
    log_det = float(shrunk.log().sum()) + (zeros * math.log(shrinkage * var) if zeros else 0.0)
    return 0.5 * dim * math.log(TWO_PI_E) + 0.5 * log_det


def mse_lower_bound(hxz: float, data_dim: int) -> float:
    """Theorem 1: the minimal per-pixel reconstruction MSE ``xi >= exp(2 H(x|z) / d_x) / (2 pi e)``."""
    if data_dim <= 0:
        raise ValueError(f"need data_dim > 0; got {data_dim}")
    return math.exp(2.0 * hxz / data_dim) / TWO_PI_E


def swap_entropy(bound: float, data_dim: int, hx_from: float, hx_to: float) -> float:
    """Theorem 1's bound recomputed with ``H(x) := hx_to`` instead of ``hx_from``, same ``L_C``.

    ``exp(2 (H - L_C) / d) / (2 pi e)`` scales by ``exp(2 (hx_to - hx_from) / d)``. The factor does
    not depend on ``L_C``, so it also carries a mean of per-client bounds over exactly.
    """
    if data_dim <= 0:
        raise ValueError(f"need data_dim > 0; got {data_dim}")
    return bound * math.exp(2.0 * (hx_to - hx_from) / data_dim)
