"""A federated client's side of ``cem.federation = global``: what it uploads for the refit.

Each refit is two steps (:class:`~fl_cem.federated.global_cem.GlobalCem` drives them): the
client sends local k-means centres and their counts, the server clusters them into global
centres, then the client sends its per-cluster counts, sums and second moments about those.
Under ``cem.stats-clip`` the first step sends clipped Lloyd sums instead of centres, so every
upload has a bounded sensitivity; ``cem.stats-noise`` adds the Gaussian mechanism's noise and
``cem.secure-aggregation`` masks the uploads so that the server reads only their sum. These are
the curious server's view of the client's data (``fl-cem attack --attack cem_stats``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from fl_cem.cem import MixtureStats
from fl_cem.cem.kmeans import fit_class_centres
from fl_cem.config import Config
from fl_cem.data import DataSplits
from fl_cem.federated.secure_sum import mask
from fl_cem.federated.stats_noise import add_noise, noise_seed


class CemUploads:
    """The refit's uploads, mixed into :class:`~fl_cem.federated.client_logic.SplitClient`, whose
    ``features``, ``fittable_features`` and ``load_encoder`` they call."""

    cfg: Config
    partition_id: int
    splits: DataSplits

    def local_centres(self, global_centres: Tensor | None, seed: int, encoder: dict[str, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """Local k-means centres and their counts, for the server's global initial centres; a refit
        within a round fits the ``encoder`` just averaged, loaded first."""
        if encoder is not None:
            self.load_encoder(encoder)
        z, y = self.fittable_features()
        warm = None
        if global_centres is not None:
            warm = torch.ones(self.splits.num_classes, dtype=torch.bool)
        centres = fit_class_centres(
            z.flatten(1), y, self.splits.num_classes, self.cfg.cem.clusters_per_class, self.cfg.cem.kmeans_iters,
            torch.Generator().manual_seed(seed), previous=global_centres, warm=warm,
        )
        stats = MixtureStats.compute(z.flatten(1), y, centres, self.cfg.cem.clusters_per_class, self.cfg.cem.covariance)
        return centres, stats.counts

    def local_stats(self, centres: Tensor) -> MixtureStats:
        """Sufficient statistics of the local features about the server's centres (residuals clipped to ``cem.stats-clip``)."""
        z, y = self.features()
        cem = self.cfg.cem
        return MixtureStats.compute(z.flatten(1), y, centres.to(z.dtype), cem.clusters_per_class, cem.covariance, clip=cem.stats_clip)

    def lloyd_stats(self, global_centres: Tensor | None, encoder: dict[str, Tensor] | None = None) -> MixtureStats:
        """The first refit step under ``cem.stats-clip``: counts and clipped residual sums about the
        server's last ``global_centres`` (one Lloyd step, from which the server moves each centre to
        its cluster's mean), or where there are none yet each class's features in its first slot about
        the origin (the server splits the class mean into ``k`` centres, ``combine_cem_centres``).

        Local k-means centres are not sent here: one sample can move every Lloyd iteration's
        assignment, so their sensitivity has no bound that noise could be scaled to."""
        if encoder is not None:
            self.load_encoder(encoder)
        z, y = self.features()
        z = z.flatten(1)
        cem = self.cfg.cem
        k = cem.clusters_per_class
        if global_centres is None:
            centres = z.new_zeros(self.splits.num_classes * k, z.shape[1])
            return MixtureStats.compute(z, y, centres, k, cem.covariance, clip=cem.stats_clip, index=y * k)
        return MixtureStats.compute(z, y, global_centres.to(z.dtype), k, cem.covariance, clip=cem.stats_clip)

    def centres_upload(
        self, global_centres: Tensor | None, seed: int, encoder: dict[str, Tensor] | None, peers: list[int], nonce: str
    ) -> dict[str, Tensor]:
        """What the client sends for the first refit step: its local centres and counts, or with
        ``cem.secure-aggregation`` the masked count-weighted centres and counts (only their sum over
        ``peers`` is readable); under ``cem.stats-clip`` the counts and sums of :meth:`lloyd_stats`
        instead, noised with ``cem.stats-noise``, then masked."""
        if self.cfg.cem.bounded_uploads:
            stats = self.lloyd_stats(global_centres, encoder)
            return self._protected({"counts": stats.counts, "sums": stats.sums}, peers, f"{nonce}|centres")
        centres, counts = self.local_centres(global_centres, seed, encoder)
        if not self.cfg.cem.secure_aggregation:
            return {"centres": centres, "counts": counts}
        weighted = counts.to(centres.dtype)[:, None] * centres
        return self._masked({"weighted": weighted, "counts": counts}, peers, f"{nonce}|centres")

    def stats_upload(self, centres: Tensor, peers: list[int], nonce: str) -> dict[str, Tensor]:
        """What the client sends for the second refit step: :meth:`local_stats`, noised with
        ``cem.stats-noise``, then masked with ``cem.secure-aggregation``."""
        stats = self.local_stats(centres)
        if not (self.cfg.cem.secure_aggregation or self.cfg.cem.stats_noise > 0):
            return stats.state_dict()
        uploaded = self._protected({"counts": stats.counts, "sums": stats.sums, "moments": stats.moments}, peers, f"{nonce}|stats")
        return uploaded if self.cfg.cem.secure_aggregation else {"centres": stats.centres, **uploaded}

    def _protected(self, tensors: dict[str, Tensor], peers: list[int], nonce: str) -> dict[str, Tensor]:
        """``tensors`` with the Gaussian mechanism's noise (``cem.stats-noise`` > 0,
        :func:`~fl_cem.federated.stats_noise.add_noise`), then masked (``cem.secure-aggregation``):
        noise first, so that the server, which reads only the masked uploads' sum, sees the sum of
        the noisy statistics. The noise seed derives from ``run.seed``, this client and the upload's nonce."""
        cem = self.cfg.cem
        if cem.stats_noise > 0:
            tensors = add_noise(tensors, cem.stats_clip, cem.stats_noise, noise_seed(self.cfg.run.seed, nonce, self.partition_id))
        return self._masked(tensors, peers, nonce) if cem.secure_aggregation else tensors

    def _masked(self, tensors: dict[str, Tensor], peers: list[int], nonce: str) -> dict[str, Tensor]:
        """Pairwise-masked upload (:func:`fl_cem.federated.secure_sum.mask`), the pair keys standing in on ``run.seed``."""
        return mask(tensors, self.partition_id, peers, self.cfg.run.seed, nonce, integers={"counts"})
