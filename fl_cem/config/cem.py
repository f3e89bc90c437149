"""The ``cem.*`` section: the conditional-entropy loss, its mixture and its refit schedule (docs/CEM.md)."""

from __future__ import annotations

from dataclasses import dataclass, field

from fl_cem.config.checks import config_key, non_negative, one_of, positive

COVARIANCES = ("full", "diag", "isotropic")
CEM_VARIANTS = ("paper", "official")
CEM_FEDERATION = ("local", "global")


@dataclass(frozen=True)
class CEMConfig:
    lam: float = field(default=0.0, metadata=config_key("lambda"))
    """Weight of the conditional-entropy loss L_C; 0 turns CEM off at no cost. The paper's 16 is for
    ``cem.variant = official``; with ``paper`` use about 0.001-0.01 (README, "CEM")."""
    clusters_per_class: int = 3
    """Gaussian-mixture components per class (paper: k = 3n in total)."""
    covariance: str = "diag"
    """Covariance model of each component: ``full``, ``diag`` or ``isotropic``."""
    variant: str = "paper"
    """``paper`` (Eq. 5-7 as written) or ``official`` (the authors' public code)."""
    refit_every: int = 1
    """Refit the mixture (k-means++) every this many epochs."""
    federation: str = "global"
    """Federated runs: clients use their ``local`` statistics or the server's ``global`` merge."""
    kmeans_iters: int = 10
    """Lloyd iterations per refit."""
    secure_aggregation: bool = False
    """``federation = global``: clients mask their uploaded centres and statistics with pairwise
    masks that cancel in the sum (Bonawitz et al. 2017, simulated without dropout recovery), so
    the server sees only the federation's sums; the merged statistics stay exact, and the first
    refit's centres become slot-wise averages instead of k-means on the clients' centres."""
    stats_clip: float = 0.0
    """``federation = global``: L2 bound C on each feature's residual about its cluster's
    reference centre before it enters an upload, so one sample changes a count by 1, a sum by
    at most C and the second moments by at most C^2; C > 0 also replaces the first refit step's
    local k-means centres (whose sensitivity nothing bounds) with one clipped Lloyd step about
    the server's centres (docs/CEM.md). 0: no clipping, today's protocol."""
    stats_noise: float = 0.0
    """Noise multiplier z of the Gaussian mechanism on each client's CEM uploads: every count,
    sum and moment gets N(0, (z x its sensitivity)^2), before secure aggregation masks it
    (needs ``stats-clip`` > 0); 0 turns it off. The guarantee per upload and per run is in
    results.json (``cem_privacy``) and docs/CEM.md."""

    def __post_init__(self) -> None:
        non_negative("cem.lambda", self.lam)
        positive("cem.clusters-per-class", self.clusters_per_class)
        one_of("cem.covariance", self.covariance, COVARIANCES)
        one_of("cem.variant", self.variant, CEM_VARIANTS)
        positive("cem.refit-every", self.refit_every)
        one_of("cem.federation", self.federation, CEM_FEDERATION)
        positive("cem.kmeans-iters", self.kmeans_iters)
        if self.secure_aggregation and self.federation != "global":
            raise ValueError("cem.secure-aggregation masks the uploads of cem.federation = global; with 'local' nothing is uploaded")
        non_negative("cem.stats-clip", self.stats_clip)
        non_negative("cem.stats-noise", self.stats_noise)
        for key, value in (("cem.stats-noise", self.stats_noise), ("cem.stats-clip", self.stats_clip)):
            if value > 0 and self.federation != "global":
                raise ValueError(f"{key} acts on the uploads of cem.federation = global; with 'local' nothing is uploaded")
        if self.stats_noise > 0 and self.stats_clip == 0:
            raise ValueError("cem.stats-noise needs cem.stats-clip > 0: without a clip one sample's effect on a sum is unbounded, so no noise scale protects it")

    @property
    def enabled(self) -> bool:
        return self.lam > 0

    @property
    def bounded_uploads(self) -> bool:
        """Whether the uploads have bounded sensitivity (``stats-clip`` > 0): clipped residuals, and
        a clipped Lloyd step instead of local k-means in the first refit step."""
        return self.stats_clip > 0

    @property
    def fits_before_training(self) -> bool:
        """Whether the first mixture is fitted on the untrained encoder, so L_C acts from step one.

        The paper fits at the start of every epoch (Alg. 1); the authors' code fits at the end
        of each, so its first epoch trains without L_C and the mixture never describes random
        features (docs/CEM.md).
        """
        return self.variant == "paper"

    @property
    def before_defense(self) -> bool:
        """Whether the mixture and ``L_C`` see the encoder's output before the defense's dropout or
        top-k (official: the authors compute the loss on the clean encoder output, ahead of noise,
        dropout and pruning, ``model_training_paral_pruning.py`` lines 1037-1099) or the
        transformed features ``z_hat`` (paper: Eq. 3's deterministic map x -> z_hat)."""
        return self.variant == "official"

    def refits_at(self, epoch: int) -> bool:
        """Whether the mixture is refitted before training epoch ``epoch`` (0-based).

        The one schedule of every path (centralized, a federated client's local fit, the
        server's global fit, also mid-round): Algorithm 1 refits at each epoch start, thinned to
        every ``refit-every`` epochs; the first epoch only when :attr:`fits_before_training`.
        """
        return self.enabled and epoch % self.refit_every == 0 and (epoch > 0 or self.fits_before_training)
