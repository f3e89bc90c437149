"""The exponential relation between reconstruction MSE and H(x|z) (paper Theorem 1, Fig. 3).

Theorem 1 bounds the MSE of any inversion by ``exp(2 H(x|z) / d_x) / (2 pi e)``: exponential in
the conditional entropy with rate ``2 / d_x``. Fig. 3 shows the measured MSE of a decoder
attack following such a curve as the noise varies. We fit ``MSE = a exp(b H)`` by least squares
on ``log MSE`` (the multiplicative scatter of MSEs makes the log scale the natural one) and
report Pearson's correlation of ``H`` with ``log MSE`` (how exponential the relation is) and
with ``MSE`` itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
import numpy as np
from numpy.typing import ArrayLike


@dataclass(frozen=True)
class ExpFit:
    """``y = exp(log_scale + rate * x)`` and how well it holds."""

    log_scale: float
    """``log a``; kept in logs because ``a`` overflows for entropies far from 0."""
    rate: float
    r_log: float
    """Pearson correlation of ``x`` and ``log y``: +-1 when the points lie on one exponential."""
    r_linear: float
    """Pearson correlation of ``x`` and ``y``."""
    n: int

    def __call__(self, x: ArrayLike) -> np.ndarray:
        return np.exp(self.log_scale + self.rate * np.asarray(x, dtype=float))


def exponential_fit(x: ArrayLike, y: ArrayLike) -> ExpFit:
    """Fit ``y = a exp(b x)`` by least squares on ``log y``.

    Parameters
    ----------
    x
        Conditional entropies H(x|z) (any finite values; the paper's are "relative").
    y
        Reconstruction MSEs, all > 0.

    Returns
    -------
    ExpFit
        ``log a``, ``b`` and the correlations; ``a exp(b x)`` is the geometric-mean curve.

    Raises
    ------
    ValueError
        Fewer than 2 points, non-finite ``x``, ``y <= 0``, or all ``x`` equal (no slope).
    """
    xs = np.asarray(x, dtype=float)
    ys = np.asarray(y, dtype=float)
    if xs.shape != ys.shape or xs.ndim != 1 or len(xs) < 2:
        raise ValueError(f"an exponential fit needs two equal-length sequences of >= 2 points; got {xs.shape} and {ys.shape}")
    if not np.all(np.isfinite(xs)) or not np.all(np.isfinite(ys)) or np.any(ys <= 0):
        raise ValueError("an exponential fit needs finite x and finite y > 0")
    if np.ptp(xs) == 0:
        raise ValueError("an exponential fit needs at least two distinct x values")
    logs = np.log(ys)
    rate, intercept = np.polyfit(xs, logs, 1)
    return ExpFit(
        log_scale=float(intercept),
        rate=float(rate),
        r_log=_pearson(xs, logs),
        r_linear=_pearson(xs, ys),
        n=len(xs),
    )


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson's r; NaN when one side is constant (no correlation is defined)."""
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(np.corrcoef(a, b)[0, 1])
