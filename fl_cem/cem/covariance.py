"""The three covariance models of a mixture component and their log-determinant ratios.

Every component covariance ``Sigma_j`` is stored in one of three shapes (``cem.covariance``):

=============  ============  =============================================
mode           stored shape  ``Sigma_j``
=============  ============  =============================================
``full``       ``(K, d, d)`` the matrix itself
``diag``       ``(K, d)``    ``diag(s_j)``
``isotropic``  ``(K,)``      ``s_j * I`` with ``s_j = trace(Sigma_j) / d``
=============  ============  =============================================

The one quantity the bound needs from them is the ratio of Theorem 2 (Eq. 3, Eq. 7),
``log(|Sigma_j + Sigma_p| / |Sigma_p|)`` with ``Sigma_p = sigma^2 I``. It is computed as
``log|I + Sigma_j / sigma^2|``: that matrix has all eigenvalues >= 1, so its Cholesky factor and
logarithm stay well conditioned however small ``Sigma_j`` is, and a zero covariance gives exactly 0.
"""

from __future__ import annotations

import torch
from torch import Tensor

MODES = ("full", "diag", "isotropic")

_JITTER = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)
"""Diagonal loadings, relative to the mean diagonal, tried when rounding broke definiteness."""


def log_det_ratio(cov: Tensor, mode: str, dim: int, sigma: float) -> Tensor:
    """``log(|Sigma_j + sigma^2 I| / |sigma^2 I|)`` for each component (the ratio in Eq. 7).

    Parameters
    ----------
    cov
        ``(P, d, d)``, ``(P, d)`` or ``(P,)`` covariances stored in ``mode``.
    mode
        ``full``, ``diag`` or ``isotropic``.
    dim
        Feature dimension ``d`` (an isotropic covariance does not carry it).
    sigma
        Noise standard deviation, > 0.

    Returns
    -------
    Tensor
        ``(P,)`` ratios, differentiable with respect to ``cov``.
    """
    var = sigma**2
    if mode == "full":
        eye = torch.eye(dim, dtype=cov.dtype, device=cov.device)
        return _cholesky_log_det(eye + 0.5 * (cov + cov.transpose(-1, -2)) / var, eye)
    if mode == "diag":
        return torch.log1p(cov.clamp_min(0) / var).sum(-1)
    return dim * torch.log1p(cov.clamp_min(0) / var)


def convert(cov: Tensor, source: str, target: str) -> Tensor:
    """Coarsen a stored covariance to a simpler mode (full -> diag -> isotropic).

    The diagonal of a full matrix keeps the per-coordinate variances and ``trace / d`` keeps
    the total variance. By Hadamard's inequality and the AM-GM inequality a coarser mode never
    gives a smaller ratio, so ``L_C(full) <= L_C(diag) <= L_C(isotropic)`` on the same data.
    """
    if MODES.index(target) < MODES.index(source):
        raise ValueError(f"cannot refine a {source!r} covariance into a {target!r} one")
    if source == "full" and target != "full":
        cov, source = torch.diagonal(cov, dim1=-2, dim2=-1), "diag"
    if source == "diag" and target == "isotropic":
        cov = cov.mean(-1)
    return cov


def derivable_modes(mode: str) -> tuple[str, ...]:
    """Modes whose bound can be reported from statistics stored in ``mode``."""
    return MODES[MODES.index(mode) :]


def low_rank_log_det_ratio(blocks: Tensor, cov: Tensor, scale: Tensor, sigma: float) -> Tensor:
    """``log|I + Sigma_j / sigma^2|`` of ``Sigma_j = B_j + c_j R_j^T R_j``, differentiable in ``R`` only.

    This is the full-covariance ratio of Eq. 7 after the update of Eq. 6, where
    ``B_j = (1 - w_j) Sigma_j^old`` is a constant and ``R_j`` holds the batch residuals of
    cluster ``j``. The gradient ``2 c_j / sigma^2 R_j A_j^{-1}`` comes from the forward pass's
    Cholesky factor with one triangular solve per residual row, ``O(n_j d^2)``, instead of
    autograd through the Cholesky decomposition (several ``O(d^3)`` products per cluster,
    about 30x slower at ``d = 512``).

    Parameters
    ----------
    blocks
        ``(P, m, d)`` residuals ``z - mu_j`` of each cluster, zero-padded to ``m`` rows.
    cov
        ``(P, d, d)`` the updated ``Sigma_j`` itself (computed by the caller, no gradient).
    scale
        ``(P,)`` the factors ``c_j``.
    sigma
        Noise standard deviation, > 0.

    Returns
    -------
    Tensor
        ``(P,)`` log-determinant ratios.
    """
    return _LowRankLogDet.apply(blocks, cov.detach(), scale.detach(), sigma)


class _LowRankLogDet(torch.autograd.Function):
    @staticmethod
    def forward(ctx, blocks: Tensor, cov: Tensor, scale: Tensor, sigma: float) -> Tensor:  # type: ignore[override]
        eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
        factor = _cholesky(eye + 0.5 * (cov + cov.transpose(1, 2)) / sigma**2, eye)
        ctx.save_for_backward(blocks, factor, scale)
        ctx.var = sigma**2
        return 2.0 * torch.log(torch.diagonal(factor, dim1=-2, dim2=-1)).sum(-1)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None, None]:  # type: ignore[override]
        blocks, factor, scale = ctx.saved_tensors
        solved = torch.cholesky_solve(blocks.transpose(1, 2), factor)  # A^{-1} R^T, (P, d, m)
        coef = 2.0 * grad * scale / ctx.var
        return coef[:, None, None] * solved.transpose(1, 2), None, None, None


def _cholesky_log_det(matrix: Tensor, eye: Tensor) -> Tensor:
    """``log|A|`` of symmetric positive-definite ``A`` by Cholesky."""
    return 2.0 * torch.log(torch.diagonal(_cholesky(matrix, eye), dim1=-2, dim2=-1)).sum(-1)


def _cholesky(matrix: Tensor, eye: Tensor) -> Tensor:
    """Cholesky factor of each matrix, retrying the ones rounding left indefinite with a jitter.

    The exact ``I + Sigma / sigma^2`` has every eigenvalue >= 1, but a float32 ``Sigma`` whose
    scale is ``10^6 sigma^2`` carries rounding errors of order 1 after the division. The jitter
    is therefore relative to the matrix's mean diagonal, growing from ``1e-6`` until the
    factorisation succeeds; it moves the log-determinant by at most ``d`` times that fraction
    of the mean eigenvalue, a relative error far below the loss's own scale in that regime.
    """
    factor, info = torch.linalg.cholesky_ex(matrix)
    failed = (info > 0).nonzero().flatten()
    scale = torch.diagonal(matrix, dim1=-2, dim2=-1).mean(-1).clamp_min(1.0)
    for relative in _JITTER:
        if not len(failed):
            return factor
        retry, info = torch.linalg.cholesky_ex(matrix[failed] + (relative * scale[failed])[:, None, None] * eye)
        factor = factor.index_put((failed,), retry)
        failed = failed[info > 0]
    if not len(failed):
        return factor
    raise RuntimeError("a CEM covariance is not finite: I + Sigma / sigma^2 has no Cholesky factor")
