"""Class-conditional cluster assignment and the sufficient statistics of the Gaussian mixture.

The mixture of Theorem 2 has ``K = k * num_classes`` components; component ``j`` belongs to
class ``j // k`` (Sec. 3.4: "each Gaussian component or cluster belongs to one specific
target"), so a feature is only ever assigned to a centre of its own class.

A fitted mixture is a function of per-cluster counts, sums and second moments, which is what
makes the federated path exact: clients send :class:`MixtureStats`, the server adds them
(:meth:`MixtureStats.merge`), and :meth:`MixtureStats.mixture` turns the sum into the same
``(pi, mu, Sigma)`` that one machine holding all the data would have computed. Moments are
taken about shared reference centres rather than the origin, so that ``E[r r^T] - E[r] E[r]^T``
subtracts two small numbers instead of two large ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Sequence

import torch
from torch import Tensor

_CHUNK_ELEMENTS = 1 << 24
"""Rows of a large assignment are processed in chunks of about this many gathered centre entries."""


class Mixture(NamedTuple):
    """Parameters of a Gaussian mixture: weights ``(K,)``, means ``(K, d)``, covariances."""

    weights: Tensor
    means: Tensor
    cov: Tensor


def flatten_features(z: Tensor) -> Tensor:
    """``(B, C, H, W)`` or ``(B, d)`` features as ``(B, d)``, in float32 or wider.

    Half-precision inputs are widened because the log-determinants and second moments of
    Eq. 6-7 lose all precision in float16 / bfloat16; float64 stays float64 (gradcheck).
    """
    if z.dim() < 2:
        raise ValueError(f"CEM features must be (B, d) or (B, C, H, W); got shape {tuple(z.shape)}")
    flat = z.reshape(z.shape[0], -1)
    return flat if flat.dtype == torch.float64 else flat.float()


def check_labels(labels: Tensor, num_features: int, num_classes: int) -> Tensor:
    """Labels as a flat int64 tensor, validated against the features and the class count."""
    labels = labels.reshape(-1).long()
    if labels.numel() != num_features:
        raise ValueError(f"got {num_features} CEM features but {labels.numel()} labels")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"CEM labels must lie in [0, {num_classes}); got [{int(labels.min())}, {int(labels.max())}]")
    return labels


@torch.no_grad()
def assign(z: Tensor, labels: Tensor, centres: Tensor, clusters_per_class: int) -> Tensor:
    """Index of the nearest centre of each feature's own class (Algorithm 1, line 9).

    Parameters
    ----------
    z
        ``(B, d)`` features.
    labels
        ``(B,)`` class labels.
    centres
        ``(K, d)`` centres, ``k`` consecutive rows per class.
    clusters_per_class
        ``k``.

    Returns
    -------
    Tensor
        ``(B,)`` global cluster indices ``label * k + nearest``.
    """
    k = clusters_per_class
    grouped = centres.to(z.dtype).reshape(-1, k, centres.shape[-1])
    norms = grouped.square().sum(-1)
    rows = max(1, _CHUNK_ELEMENTS // (k * z.shape[1]))
    nearest = []
    for start in range(0, z.shape[0], rows):
        zc, yc = z[start : start + rows], labels[start : start + rows]
        # ||z - c||^2 = ||z||^2 - 2 z.c + ||c||^2; the first term is the same for every candidate.
        score = norms[yc] - 2.0 * torch.einsum("bkd,bd->bk", grouped[yc], zc)
        nearest.append(score.argmin(1))
    local = torch.cat(nearest) if nearest else labels.new_zeros(0)
    return labels * k + local


def clip_rows(residuals: Tensor, clip: float) -> Tensor:
    """Each row scaled down to L2 norm at most ``clip`` (``0``: unchanged), as DP-SGD clips
    per-example gradients (Abadi et al., CCS 2016, Alg. 1): direction kept, norm bounded."""
    if clip <= 0:
        return residuals
    norms = residuals.norm(dim=1, keepdim=True)
    return residuals * (clip / norms.clamp_min(clip))


def scatter_moments(residuals: Tensor, index: Tensor, size: int, mode: str) -> Tensor:
    """Per-cluster sums of second moments of ``residuals`` in the shape of ``mode``.

    ``full`` sums outer products ``r r^T`` (one ``n_j x d`` matrix product per occupied
    cluster, never a ``(B, d, d)`` tensor), ``diag`` sums ``r^2`` and ``isotropic`` sums
    ``||r||^2``. Differentiable with respect to ``residuals``.
    """
    if mode == "diag":
        return residuals.new_zeros(size, residuals.shape[1]).index_add(0, index, residuals.square())
    if mode == "isotropic":
        return residuals.new_zeros(size).index_add(0, index, residuals.square().sum(1))
    out = residuals.new_zeros(size, residuals.shape[1], residuals.shape[1])
    order = torch.argsort(index, stable=True)
    clusters, counts = torch.unique_consecutive(index[order], return_counts=True)
    blocks = torch.split(residuals[order], counts.tolist())
    products = torch.stack([block.T @ block for block in blocks]) if blocks else out[:0]
    return out.index_put((clusters,), products)


@dataclass(frozen=True)
class MixtureStats:
    """Sufficient statistics of the mixture: everything a fit needs, and all of it additive.

    The covariance mode is implied by the shape of ``moments``: ``(K, d, d)`` full,
    ``(K, d)`` diag, ``(K,)`` isotropic.
    """

    centres: Tensor
    """``(K, d)`` reference centres the features were assigned to and the moments are taken about."""
    counts: Tensor
    """``(K,)`` int64 number of features assigned to each cluster."""
    sums: Tensor
    """``(K, d)`` sum of ``z - centre`` over each cluster's features."""
    moments: Tensor
    """Sum of ``(z - c)(z - c)^T`` (full), ``(z - c)^2`` (diag) or ``||z - c||^2`` (isotropic)."""

    @property
    def mode(self) -> str:
        return {3: "full", 2: "diag", 1: "isotropic"}[self.moments.dim()]

    @classmethod
    @torch.no_grad()
    def compute(
        cls, z: Tensor, labels: Tensor, centres: Tensor, clusters_per_class: int, mode: str, clip: float = 0.0, index: Tensor | None = None
    ) -> MixtureStats:
        """Statistics of ``(B, d)`` features assigned to the nearest centre of their own class.

        ``clip > 0`` scales each residual ``z - c`` down to L2 norm at most ``clip`` first
        (:func:`clip_rows`), which bounds what one feature adds: 1 to one count, at most ``clip``
        (L2) to one cluster's sum and ``clip^2`` to its second moments (``||r r^T||_F = ||r||^2``,
        and ``||r^2||_2 <= ||r||^2``). ``index`` replaces the nearest-centre assignment.
        """
        index = assign(z, labels, centres, clusters_per_class) if index is None else index
        residuals = clip_rows(z - centres.to(z.dtype)[index], clip)
        size = centres.shape[0]
        return cls(
            centres=centres.to(z.dtype).clone(),
            counts=torch.bincount(index, minlength=size),
            sums=residuals.new_zeros(size, z.shape[1]).index_add(0, index, residuals),
            moments=scatter_moments(residuals, index, size, mode),
        )

    @staticmethod
    def merge(parts: Sequence[MixtureStats]) -> MixtureStats:
        """Exact pooling of statistics computed on disjoint data about the same centres.

        Counts, sums and moments about a common reference are additive, so the merged
        statistics equal those computed on the union (moment matching, no approximation).
        """
        if not parts:
            raise ValueError("MixtureStats.merge needs at least one part")
        first = parts[0]
        for part in parts[1:]:
            if part.moments.shape != first.moments.shape:
                raise ValueError(
                    f"cannot merge {part.mode} statistics of shape {tuple(part.moments.shape)} "
                    f"with {first.mode} ones of shape {tuple(first.moments.shape)}"
                )
            if not torch.equal(part.centres, first.centres):
                raise ValueError("cannot merge MixtureStats taken about different centres; broadcast one set first")
        return MixtureStats(
            centres=first.centres.clone(),
            counts=torch.stack([p.counts for p in parts]).sum(0),
            sums=torch.stack([p.sums for p in parts]).sum(0),
            moments=torch.stack([p.moments for p in parts]).sum(0),
        )

    def feasible(self) -> MixtureStats:
        """The nearest statistics that some data set could have produced, for noisy sums.

        Gaussian noise on the uploads (``cem.stats-noise``) can make a merged count negative and
        a cluster's covariance ``Q / n - o o^T`` indefinite, which no data has: a negative count
        would flip the sign of a weight and a negative variance makes Eq. 7's log-determinant
        undefined. Post-processing a differentially private release keeps its guarantee, so the
        merge repairs them here: counts are clamped at 0, a cluster with none keeps no sum and no
        moments (it stays empty, as :meth:`mixture` treats empty clusters), and the covariance is
        projected onto the PSD cone (eigenvalues clamped at 0, full; entries clamped at 0, diag and
        isotropic), with the moments rebuilt from it as ``n (Sigma + o o^T)`` so that
        :meth:`mixture` returns the projected covariance.
        """
        counts = self.counts.clamp_min(0)
        empty = counts == 0
        n = counts.to(self.sums.dtype).clamp_min(1)
        sums = torch.where(empty[:, None], torch.zeros_like(self.sums), self.sums)
        offset = sums / n[:, None]
        if self.mode == "full":
            cov = self.moments / n[:, None, None] - offset[:, :, None] * offset[:, None, :]
            values, vectors = torch.linalg.eigh(0.5 * (cov + cov.transpose(1, 2)))
            cov = (vectors * values.clamp_min(0)[:, None, :]) @ vectors.transpose(1, 2)
            moments = n[:, None, None] * (cov + offset[:, :, None] * offset[:, None, :])
        elif self.mode == "diag":
            moments = n[:, None] * ((self.moments / n[:, None] - offset.square()).clamp_min(0) + offset.square())
        else:
            square = offset.square().sum(1)
            moments = n * ((self.moments / n - square).clamp_min(0) + square)
        moments = torch.where(empty.reshape(-1, *[1] * (moments.dim() - 1)), torch.zeros_like(moments), moments)
        return MixtureStats(self.centres.clone(), counts, sums, moments)

    def mixture(self) -> Mixture:
        """Maximum-likelihood ``(pi, mu, Sigma)`` given the hard assignment.

        ``pi_j = n_j / N``, ``mu_j = c_j + S_j / n_j``, ``Sigma_j = Q_j / n_j - (S_j / n_j)(S_j / n_j)^T``.
        An empty cluster keeps its reference centre and gets ``pi_j = 0`` and ``Sigma_j = 0``,
        so Eq. 7 skips it until a batch assigns features to it (then Eq. 6 gives it the batch
        covariance outright).
        """
        total = int(self.counts.sum())
        if total == 0:
            raise ValueError("cannot build a mixture from statistics of zero samples")
        n = self.counts.to(self.sums.dtype)
        safe = n.clamp_min(1)
        offset = self.sums / safe[:, None]
        if self.mode == "full":
            cov = self.moments / safe[:, None, None] - offset[:, :, None] * offset[:, None, :]
            cov = 0.5 * (cov + cov.transpose(1, 2))
        elif self.mode == "diag":
            cov = (self.moments / safe[:, None] - offset.square()).clamp_min(0)
        else:
            cov = ((self.moments / safe - offset.square().sum(1)) / self.sums.shape[1]).clamp_min(0)
        return Mixture(weights=n / total, means=self.centres + offset, cov=cov)

    def state_dict(self) -> dict[str, Tensor]:
        """Plain tensors, for Flower ``ArrayRecord`` messages."""
        return {"centres": self.centres, "counts": self.counts, "sums": self.sums, "moments": self.moments}

    @classmethod
    def from_state_dict(cls, state: dict[str, Tensor]) -> MixtureStats:
        """Inverse of :meth:`state_dict`."""
        return cls(state["centres"], state["counts"].long(), state["sums"], state["moments"])
