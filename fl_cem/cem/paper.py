"""The per-batch CEM loss as the paper writes it: Eq. 5 (weights), Eq. 6 (covariances), Eq. 7 (L_C).

Pure functions of the stored mixture and one batch, so that autograd's gradcheck can test
them and :class:`fl_cem.cem.ConditionalEntropy` only has to write the detached results back.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from fl_cem.cem.bound import mixture_bound
from fl_cem.cem.covariance import log_det_ratio, low_rank_log_det_ratio
from fl_cem.cem.stats import scatter_moments


class BatchUpdate(NamedTuple):
    """Result of one batch: the loss and the mixture statistics it was computed from."""

    loss: Tensor
    """Scalar ``L_C`` (Eq. 7), differentiable with respect to the batch features."""
    weights: Tensor
    """``(K,)`` mixture weights after Eq. 5 (no gradient)."""
    present: Tensor
    """``(P,)`` indices of the clusters the batch assigned features to."""
    cov: Tensor
    """Covariances of the ``present`` clusters after Eq. 6 (detached, to be stored)."""
    log_det: Tensor
    """``(P,)`` log-determinant ratios of the ``present`` clusters (detached, to be stored)."""


def paper_batch(
    z: Tensor,
    index: Tensor,
    centres: Tensor,
    weights: Tensor,
    cov: Tensor,
    log_det: Tensor,
    dataset_size: int,
    sigma: float,
    mode: str,
) -> BatchUpdate:
    """Update the mixture with one batch (Algorithm 1, lines 9-14) and return ``L_C``.

    With ``n_j`` features of the batch assigned to cluster ``j``, ``N`` the dataset size and
    ``N_batch`` the batch size:

    * Eq. 5: ``pi_j <- (pi_j (N - N_batch) + n_j) / N``;
    * Eq. 6: ``Sigma_j <- (1 - n_j / (pi_j N)) Sigma_j + n_j / (pi_j N) dSigma_j`` with the
      updated ``pi_j``, where ``dSigma_j = mean_i (z_i - mu_j)(z_i - mu_j)^T`` is taken about
      the stored centre ``mu_j``. Taking it about the stored centre (not the batch mean) keeps
      it defined for a single sample and makes a whole-dataset batch reproduce the fitted
      covariance exactly. Clusters with ``n_j = 0`` keep ``Sigma_j``;
    * Eq. 7: ``L_C = sum_j pi_j (-log pi_j + 1/2 log(|Sigma_j + Sigma_p| / |Sigma_p|))``.

    Parameters
    ----------
    z
        ``(B, d)`` features ``z_hat`` (before noise), float32 or float64.
    index
        ``(B,)`` cluster of each feature, from :func:`fl_cem.cem.stats.assign`.
    centres, weights, cov, log_det
        Stored means ``(K, d)``, weights ``(K,)``, covariances (shape of ``mode``) and their
        log-determinant ratios ``(K,)``; treated as constants.
    dataset_size
        ``N`` in Eq. 5, at least the batch size.
    sigma
        Noise standard deviation (``Sigma_p = sigma^2 I``), > 0.
    mode
        ``full``, ``diag`` or ``isotropic``.

    Returns
    -------
    BatchUpdate
        The loss; its gradient reaches ``z`` only through ``dSigma_j`` (the weights are
        piecewise constant in ``z``, so they carry none).
    """
    batch, dim = z.shape
    if batch > dataset_size:
        raise ValueError(f"batch of {batch} features is larger than the dataset size N = {dataset_size} of Eq. 5")
    dtype = z.dtype
    centres, weights, cov, log_det = (t.to(dtype) for t in (centres, weights, cov, log_det))
    present, local, counts = torch.unique(index, return_inverse=True, return_counts=True)
    n = counts.to(dtype)

    assigned = torch.bincount(index, minlength=len(weights)).to(dtype)
    new_weights = (weights * (dataset_size - batch) + assigned) / dataset_size

    residuals = z - centres[index]
    share = (n / (new_weights[present] * dataset_size)).clamp(max=1.0)
    keep = 1.0 - share
    if mode == "full":
        blocks = _pad_blocks(residuals, local, len(present))
        base = keep[:, None, None] * cov[present]
        scale = share / n
        new_cov = base + scale[:, None, None] * (blocks.detach().transpose(1, 2) @ blocks.detach())
        new_log_det = low_rank_log_det_ratio(blocks, new_cov, scale, sigma)
    else:
        moments = scatter_moments(residuals, local, len(present), mode)
        if mode == "diag":
            new_cov = keep[:, None] * cov[present] + share[:, None] * moments / n[:, None]
        else:
            new_cov = keep * cov[present] + share * moments / (n * dim)
        new_log_det = log_det_ratio(new_cov, mode, dim, sigma)

    loss = mixture_bound(new_weights, log_det.index_put((present,), new_log_det))
    return BatchUpdate(
        loss=loss, weights=new_weights.detach(), present=present, cov=new_cov.detach(), log_det=new_log_det.detach()
    )


def _pad_blocks(residuals: Tensor, local: Tensor, size: int) -> Tensor:
    """``(size, m, d)`` residuals grouped by cluster, zero-padded to the largest group ``m``."""
    order = torch.argsort(local, stable=True)
    grouped = local[order]
    counts = torch.bincount(grouped, minlength=size)
    starts = torch.cumsum(counts, 0) - counts
    rows = torch.arange(len(grouped), device=local.device) - starts[grouped]
    blocks = residuals.new_zeros(size, int(counts.max()), residuals.shape[1])
    return blocks.index_put((grouped, rows), residuals[order])
