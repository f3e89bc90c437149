"""Per-class (weighted) k-means++ and Lloyd iterations that place the mixture's centres.

Algorithm 1 (line 5) fits a k-component Gaussian mixture to the epoch's features. As in the
authors' code (``kmeans_cuda`` in ``model_training_paral_pruning.py``) the components are
found by hard k-means within each class, seeded by k-means++ (Arthur & Vassilvitskii, 2007)
the first time and warm-started from the previous centres afterwards. The weighted form is
what the federated server runs on the clients' local centres, each weighted by its count.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def kmeans_pp(points: Tensor, weights: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """Weighted k-means++ seeding: draw each next centre with probability ``w_i * D(x_i)^2``.

    When every remaining point coincides with a chosen centre (all ``D = 0``, e.g. features
    with zero variance) the draw falls back to ``w_i`` alone; the duplicate centre this gives
    ends up with no points, which Eq. 7 handles as ``pi_j = 0``.

    Parameters
    ----------
    points
        ``(n, d)`` points.
    weights
        ``(n,)`` non-negative weights with a positive sum.
    k
        Number of centres.
    generator
        Source of the random draws (CPU or on ``points``' device).

    Returns
    -------
    Tensor
        ``(k, d)`` centres, each a copy of one of the points.
    """
    weights = weights.to(points.dtype)
    chosen = [_draw(weights, generator)]
    nearest = (points - points[chosen[0]]).square().sum(1)
    for _ in range(1, k):
        score = weights * nearest
        index = _draw(score if float(score.sum()) > 0 else weights, generator)
        chosen.append(index)
        nearest = torch.minimum(nearest, (points - points[index]).square().sum(1))
    return points[torch.tensor(chosen, device=points.device)].clone()


def lloyd(points: Tensor, weights: Tensor, centres: Tensor, iters: int) -> Tensor:
    """Weighted Lloyd iterations from ``centres``; stops early once the assignment is stable.

    A cluster that empties takes the point farthest from its own centre out of a cluster with
    more than one point (the relocation scikit-learn's ``KMeans`` uses), so a class with at
    least ``k`` points keeps ``k`` occupied clusters.
    """
    centres = centres.to(points.dtype).clone()
    weights = weights.to(points.dtype)
    labels = None
    for _ in range(iters):
        new = _nearest(points, centres)
        if labels is not None and torch.equal(new, labels):
            break
        labels = _relocate_empty(points, weights, centres, new)
        mass = weights.new_zeros(len(centres)).index_add(0, labels, weights)
        sums = centres.new_zeros(centres.shape).index_add(0, labels, weights[:, None] * points)
        filled = mass > 0
        centres[filled] = sums[filled] / mass[filled, None]
    return centres


@torch.no_grad()
def fit_class_centres(
    z: Tensor,
    labels: Tensor,
    num_classes: int,
    clusters_per_class: int,
    iters: int,
    generator: torch.Generator,
    previous: Tensor | None = None,
    warm: Tensor | None = None,
) -> Tensor:
    """``k`` centres per class by k-means on that class's features.

    Parameters
    ----------
    z
        ``(N, d)`` features of the whole epoch.
    labels
        ``(N,)`` labels.
    num_classes, clusters_per_class
        ``C`` and ``k``; the result has ``K = C * k`` rows, class ``c`` in rows ``c*k .. c*k+k-1``.
    iters
        Lloyd iterations (``cem.kmeans-iters``).
    generator
        Randomness of the k-means++ seeding.
    previous
        ``(K, d)`` centres of the last fit, used as the starting point of classes in ``warm``.
    warm
        ``(C,)`` bool: classes whose previous centres are meaningful (they had samples).

    Returns
    -------
    Tensor
        ``(K, d)`` centres. A class with no features keeps its previous centres (zeros on the
        first fit); its clusters get no samples and ``pi = 0``.
    """
    k = clusters_per_class
    centres = z.new_zeros(num_classes * k, z.shape[1]) if previous is None else previous.to(z).clone()
    for c in range(num_classes):
        points = z[labels == c]
        if len(points) == 0:
            continue
        if len(points) < k:
            raise ValueError(
                f"class {c} has {len(points)} samples, fewer than cem.clusters-per-class = {k}; "
                "lower cem.clusters-per-class or use more data"
            )
        ones = points.new_ones(len(points))
        rows = slice(c * k, (c + 1) * k)
        start = centres[rows] if warm is not None and bool(warm[c]) else kmeans_pp(points, ones, k, generator)
        centres[rows] = lloyd(points, ones, start, iters)
    return centres


@torch.no_grad()
def combine_centres(
    centres: Sequence[Tensor], counts: Sequence[Tensor], clusters_per_class: int, iters: int, generator: torch.Generator
) -> Tensor:
    """Global initial centres from the clients' local ones (federated ``cem.federation = global``).

    Each client's ``(K, d)`` centres are points weighted by their ``(K,)`` counts; per class,
    weighted k-means++ and Lloyd on them approximate k-means on the pooled features without
    any feature leaving a client. The exact statistics follow from
    :meth:`MixtureStats.merge` once the clients have assigned their data to these centres.

    Returns
    -------
    Tensor
        ``(K, d)`` centres; classes that no client holds get zeros (and will get ``pi = 0``).
    """
    if not centres or len(centres) != len(counts):
        raise ValueError("combine_centres needs one counts tensor per centres tensor, and at least one of each")
    k = clusters_per_class
    points = torch.cat(list(centres))
    weights = torch.cat([c.to(points.device) for c in counts]).to(points.dtype)
    size = centres[0].shape[0]
    classes = (torch.arange(size, device=points.device) // k).repeat(len(centres))
    out = points.new_zeros(size, points.shape[1])
    for c in range(size // k):
        held = (classes == c) & (weights > 0)
        if not bool(held.any()):
            continue
        start = kmeans_pp(points[held], weights[held], k, generator)
        out[c * k : (c + 1) * k] = lloyd(points[held], weights[held], start, iters)
    return out


def lloyd_step_centres(counts: Tensor, sums: Tensor, reference: Tensor | None, clusters_per_class: int, generator: torch.Generator) -> Tensor:
    """Global centres from merged counts and (clipped, possibly noisy) residual sums: one Lloyd step.

    The first refit step under ``cem.stats-clip`` (``fl_cem/federated/stats_noise.py``): each
    centre moves to its cluster's mean ``c_j + S_j / n_j``; a slot whose merged count is below 1
    (empty, or pushed there by the noise) keeps its ``reference`` centre. With no reference yet
    (the first refit) the clients summed each class's features, about the origin, in the class's
    first slot; the class mean ``m`` is then split into ``k`` centres ``m + s u_j`` along public
    random unit directions ``u_j`` (``s`` = 1 % of ``|m|``), so that the nearest-centre
    assignment of the next step cuts each class at its mean along the ``u_j``, and the step
    after that moves the centres to the cells' means (the split's offsets do not bias them).

    Parameters
    ----------
    counts, sums
        ``(K,)`` merged counts and ``(K, d)`` merged sums of residuals about ``reference``.
    reference
        ``(K, d)`` centres the residuals were taken about, or ``None`` for the first refit.
    clusters_per_class
        ``k``.
    generator
        Source of the split's directions (public: the server's seed).

    Returns
    -------
    Tensor
        ``(K, d)`` float32 centres.
    """
    n = counts.double()
    shift = sums.double() / n.clamp_min(1)[:, None]
    if reference is not None:
        return torch.where((n >= 1)[:, None], reference.double() + shift, reference.double()).float()
    k = clusters_per_class
    means = torch.where((n >= 1)[:, None], shift, torch.zeros_like(shift)).reshape(-1, k, sums.shape[1])[:, 0]  # (C, d)
    directions = torch.randn(means.shape[0], k, sums.shape[1], generator=generator, dtype=torch.float64)
    directions = directions / directions.norm(dim=2, keepdim=True)
    scale = 0.01 * means.norm(dim=1).clamp_min(1e-3)
    return (means[:, None, :] + scale[:, None, None] * directions).reshape(-1, sums.shape[1]).float()


def _draw(weights: Tensor, generator: torch.Generator) -> int:
    """One index drawn with probability proportional to ``weights``, on the generator's device."""
    probs = weights.detach().to(device=generator.device, dtype=torch.float64)
    return int(torch.multinomial(probs, 1, generator=generator))


def _nearest(points: Tensor, centres: Tensor) -> Tensor:
    """Index of each point's nearest centre (squared Euclidean distance)."""
    return (centres.square().sum(1) - 2.0 * points @ centres.T).argmin(1)


def _relocate_empty(points: Tensor, weights: Tensor, centres: Tensor, labels: Tensor) -> Tensor:
    """Give each empty cluster the farthest point of a cluster that can spare one."""
    k = len(centres)
    active = weights > 0
    members = torch.bincount(labels[active], minlength=k)
    empty = (members == 0).nonzero().flatten().tolist()
    if not empty:
        return labels
    labels = labels.clone()
    spread = (points - centres[labels]).square().sum(1)
    for cluster in empty:
        spare = active & (members[labels] > 1)
        if not bool(spare.any()):
            break
        index = int(torch.where(spare, spread, spread.new_tensor(-1.0)).argmax())
        members[labels[index]] -= 1
        members[cluster] += 1
        labels[index] = cluster
        spread[index] = -1.0
    return labels
