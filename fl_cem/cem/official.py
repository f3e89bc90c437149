"""The CEM loss as the authors' public code computes it (``cem.variant = official``).

Source: github.com/xiasong0501/CEM, ``model_training_paral_pruning.py`` (the trainer that
``main_MIA.py`` instantiates), methods ``MIA_train.compute_class_means`` (the loss),
``MIA_train.train_target_step`` (how it enters the gradient) and ``MIA_train.kmeans_cuda``
(the per-epoch fit), with hyperparameters from ``run_exp.sh``. Our own re-implementation;
docs/CEM.md lists every difference from the paper's Eq. 5-8.

Per batch, for each cluster ``j`` with ``n_j > 0`` features of the batch:

* ``v_hat_j`` = mean over its features and all ``d`` coordinates of ``(z - mu_j)^2`` (a scalar);
* blended with the epoch's fitted scalar variance ``v_j``:
  ``v'_j = b_j v_hat_j + (1 - b_j) v_j`` with ``b_j = 10 n_j / (w_j N / C)``, set to 0.99 when >= 1,
  ``w_j`` the within-class weight from the fit and ``N / C`` the mean class size;
* the log-hinge ``relu(log(v'_j + gamma) - log(tau sigma^2 + gamma))`` replaces the
  log-determinant ratio, and nothing replaces the ``-log pi_j`` term;
* the loss is ``sum_j w_j hinge_j`` over all present clusters, divided by the number of
  classes present in the batch.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F

GAMMA = 0.01
"""``gamma = 0.01`` inside the logarithms of ``compute_class_means``."""
VAR_THRESHOLD = 0.125
"""``tau``: ``var_threshold=0.125`` in ``run_exp.sh`` (the argparse default is 0.1)."""
BLEND_SCALE = 10.0
"""``scaling_lambda = 10`` in ``compute_class_means``."""
BLEND_CAP = 0.99
"""``var_lambda`` becomes 0.99 when the scaled batch share reaches 1 (values in [0.99, 1) pass)."""
LR_SWITCH = 0.00041
"""``train_target_step`` uses lambda unscaled below this learning rate ..."""
LR_REFERENCE = 0.001
"""... and ``lambda * 0.001 / lr`` at or above it."""


def official_lambda(lam: float, lr: float) -> float:
    """The CEM weight the official code applies to the encoder gradient at learning rate ``lr``.

    ``train_target_step`` adds ``lambd * grad(L_C)`` when ``lr < 0.00041`` and
    ``lambd * (0.001 / lr) * grad(L_C)`` otherwise, so at the paper's ``lr = 0.05`` the
    effective weight is ``0.02 * lambda``; note the jump from ``2.44 lambda`` to ``lambda`` as
    the schedule crosses ``lr = 0.00041``.
    """
    if not lr > 0:
        raise ValueError(f"learning rate must be > 0; got {lr}")
    return lam if lr < LR_SWITCH else lam * LR_REFERENCE / lr


def within_class_weights(weights: Tensor, clusters_per_class: int) -> Tensor:
    """``pi_j / sum_{j' in class(j)} pi_j'``: the per-class weights ``kmeans_cuda`` returns."""
    grouped = weights.reshape(-1, clusters_per_class)
    total = grouped.sum(1, keepdim=True)
    return torch.where(total > 0, grouped / total.clamp_min(torch.finfo(weights.dtype).tiny), 0.0).reshape(-1)


def official_batch(
    z: Tensor,
    index: Tensor,
    labels: Tensor,
    centres: Tensor,
    weights: Tensor,
    epoch_var: Tensor,
    clusters_per_class: int,
    class_size: float,
    sigma: float,
) -> Tensor:
    """The official per-batch loss (``compute_class_means`` with ``log_entropy = 1``).

    Parameters
    ----------
    z
        ``(B, d)`` features before noise.
    index
        ``(B,)`` nearest own-class cluster of each feature.
    labels
        ``(B,)`` class labels (the loss is averaged over the distinct ones).
    centres, weights, epoch_var
        Fitted means ``(K, d)``, global weights ``(K,)`` and scalar variances
        ``trace(Sigma_j) / d`` ``(K,)``; treated as constants.
    clusters_per_class
        ``k``.
    class_size
        ``N / C``, the official ``class_length``.
    sigma
        Noise standard deviation (it sets the hinge threshold ``tau sigma^2``).

    Returns
    -------
    Tensor
        Scalar loss, differentiable with respect to ``z``.
    """
    dtype = z.dtype
    centres, weights, epoch_var = (t.to(dtype) for t in (centres, weights, epoch_var))
    within = within_class_weights(weights, clusters_per_class)
    present, local, counts = torch.unique(index, return_inverse=True, return_counts=True)
    n = counts.to(dtype)

    squared = (z - centres[index]).square().mean(1)
    batch_var = z.new_zeros(len(present)).index_add(0, local, squared) / n
    w = within[present]
    expected = w * class_size
    share = torch.where(expected > 0, BLEND_SCALE * n / expected.clamp_min(1e-12), 1.0)
    blend = torch.where(share >= 1.0, BLEND_CAP, share)
    var = blend * batch_var + (1.0 - blend) * epoch_var[present]
    hinge = F.relu(torch.log(var + GAMMA) - math.log(VAR_THRESHOLD * sigma**2 + GAMMA))
    return (w * hinge).sum() / torch.unique(labels).numel()
