"""Gaussian noise on the CEM uploads (``cem.stats-noise``): the Gaussian mechanism, and what it guarantees.

With ``cem.federation = global`` a client's uploads hold its per-cluster counts, sums and
second moments, from which a curious server decodes class prototypes
(``fl_cem/attacks/cem_stats.py``). Secure aggregation (:mod:`fl_cem.federated.secure_sum`) hides
one upload but not the sum; noise bounds what any release says about one sample, whoever reads
it. With ``cem.stats-clip = C`` each feature's residual about its reference centre is clipped
to L2 norm ``C`` (:meth:`fl_cem.cem.MixtureStats.compute`), so adding or removing one sample of
a client's partition changes one count by 1, one cluster's sum by at most ``C`` and its second
moments by at most ``C^2`` (L2 / Frobenius). :func:`add_noise` adds ``N(0, (z * sensitivity)^2)``
to every entry of each statistic (Dwork and Roth 2014, Sec. 3.5.3): each statistic alone is a
Gaussian mechanism of noise multiplier ``z``, and an upload of ``s`` statistics, rescaled to
unit sensitivity each, is one Gaussian mechanism of L2 sensitivity ``sqrt(s)``, that is
``mu = sqrt(s) / z`` Gaussian differential privacy (Dong, Roth and Su, "Gaussian Differential
Privacy", JRSS-B 2022, Def. 2.6 and Thm. 2.7). Adaptive composition of ``mu_i``-GDP releases is
``sqrt(sum mu_i^2)``-GDP, exactly (ibid., Cor. 3.3), and ``mu``-GDP is ``(epsilon, delta)``-DP
for the ``delta(epsilon)`` of :func:`gaussian_delta`, which is Balle and Wang's analytic Gaussian
mechanism (ICML 2018, Thm. 8): valid for every epsilon, tighter than the classical
``sigma = sqrt(2 ln(1.25 / delta)) / epsilon`` (which holds only for epsilon < 1).

What this does not cover: the guarantee is the channel's alone, given the encoder the
statistics were computed with. The smashed data, the gradients and (SplitFed) the encoder
weights depend on the same samples without noise. The noise seeds derive from ``run.seed``,
the client and the refit, for reproducible runs: a server that knows ``run.seed`` could
regenerate the noise, so in a deployment they stand in for randomness the client keeps, as the
pair seeds of :mod:`~fl_cem.federated.secure_sum` stand in for agreed keys.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any, Mapping

import torch
from torch import Tensor

from fl_cem.config.cem import CEMConfig

DELTA = 1e-5
"""The delta at which results report epsilon."""

CENTRES_STATISTICS = ("counts", "sums")
"""What the first refit step uploads under ``cem.stats-clip``: one clipped Lloyd step's counts and sums."""
STATS_STATISTICS = ("counts", "sums", "moments")
"""What the second refit step uploads."""


def sensitivity(name: str, clip: float) -> float:
    """L2 sensitivity of one statistic to adding or removing one sample, residuals clipped to ``clip``."""
    return {"counts": 1.0, "sums": clip, "moments": clip**2}[name]


def noise_seed(key: int, nonce: str, partition_id: int) -> int:
    """The seed of one client's noise on one upload (``nonce``: the refit and step, so no draw repeats)."""
    digest = hashlib.sha256(f"{key}|{nonce}|{partition_id}|stats-noise".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


@torch.no_grad()
def add_noise(tensors: Mapping[str, Tensor], clip: float, multiplier: float, seed: int) -> dict[str, Tensor]:
    """One upload's statistics with the Gaussian mechanism's noise, ``N(0, (multiplier * sensitivity)^2)`` per entry.

    Parameters
    ----------
    tensors
        ``counts`` (int64), ``sums`` and, in the second step, ``moments`` of residuals clipped to ``clip``.
    clip, multiplier
        ``cem.stats-clip`` (C) and ``cem.stats-noise`` (z).
    seed
        :func:`noise_seed`.

    Returns
    -------
    dict[str, Tensor]
        The noisy statistics, in the inputs' dtypes. Counts are rounded back to integers (post-
        processing, so the guarantee holds) and may be negative; full ``(K, d, d)`` moments get
        noise on the upper triangle, mirrored, so the upload stays symmetric (the triangle's L2
        sensitivity is at most that of the whole matrix).
    """
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name in sorted(tensors):
        x = tensors[name]
        std = multiplier * sensitivity(name, clip)
        noise = torch.randn(x.shape, generator=generator, dtype=torch.float64) * std
        if name == "moments" and x.dim() == 3:
            upper = torch.triu(noise)
            noise = upper + torch.triu(noise, diagonal=1).transpose(1, 2)
        noisy = x.detach().cpu().double() + noise
        out[name] = noisy.round().to(x.dtype) if not x.is_floating_point() else noisy.to(x.dtype)
    return out


def _log_phi(x: float) -> float:
    """``log Phi(x)`` of the standard normal CDF, with the asymptotic series where ``erfc`` underflows."""
    if x > -30:
        return math.log(0.5 * math.erfc(-x / math.sqrt(2)))
    return -x * x / 2 - math.log(-x) - 0.5 * math.log(2 * math.pi) + math.log1p(-1 / x**2 + 3 / x**4)


def gaussian_delta(mu: float, epsilon: float) -> float:
    """``delta(epsilon)`` of a ``mu``-GDP mechanism: ``Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2)``
    (Dong, Roth and Su 2022, Cor. 2.13; Balle and Wang 2018, Thm. 8 with ``mu = sensitivity / sigma``)."""
    first = math.exp(_log_phi(-epsilon / mu + mu / 2))
    second = math.exp(epsilon + _log_phi(-epsilon / mu - mu / 2))
    return max(first - second, 0.0)


def gaussian_epsilon(mu: float, delta: float = DELTA) -> float:
    """The smallest epsilon with ``gaussian_delta(mu, epsilon) <= delta`` (bisection; ``delta`` falls with epsilon)."""
    if mu <= 0:
        return 0.0
    if gaussian_delta(mu, 0.0) <= delta:
        return 0.0
    low, high = 0.0, 1.0
    while gaussian_delta(mu, high) > delta:
        low, high = high, 2 * high
    for _ in range(100):
        middle = (low + high) / 2
        low, high = (middle, high) if gaussian_delta(mu, middle) > delta else (low, middle)
    return high


def privacy_report(cem: CEMConfig, refits: int, delta: float = DELTA) -> dict[str, Any]:
    """What the noise guarantees for one client's samples, as results.json records it (``cem_privacy``).

    Per release (the first step's counts and sums; the second step's counts, sums and moments),
    per refit (both, composed) and per run (every refit the config schedules, composed: a
    client sampled less often releases less). ``None`` epsilons: no noise, no guarantee.
    """
    z = cem.stats_noise
    mu = {
        "centres_upload": math.sqrt(len(CENTRES_STATISTICS)) / z if z > 0 else math.inf,
        "stats_upload": math.sqrt(len(STATS_STATISTICS)) / z if z > 0 else math.inf,
    }
    mu["refit"] = math.hypot(mu["centres_upload"], mu["stats_upload"])
    mu["run"] = mu["refit"] * math.sqrt(refits)

    def epsilon(m: float) -> float | None:
        return gaussian_epsilon(m, delta) if math.isfinite(m) else None

    return {
        "stats_noise": z,
        "stats_clip": cem.stats_clip,
        "delta": delta,
        "adjacency": "add or remove one sample of a client's partition",
        "refits": refits,
        **{f"mu_{name}": (m if math.isfinite(m) else None) for name, m in mu.items()},
        **{f"epsilon_{name}": epsilon(m) for name, m in mu.items()},
        "accounting": "Gaussian DP composition over the scheduled refits (Dong, Roth, Su 2022, Cor. 3.3); "
        "the CEM channel only, given the refit's encoder; noise seeds derive from run.seed (simulation)",
    }
