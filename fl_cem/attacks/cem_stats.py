"""Class prototypes from the CEM statistics channel (``cem.federation = global``).

At each global refit a client uploads, per cluster ``j`` of the class-conditional mixture, the
count ``n_j``, the sum ``S_j`` and the second moments ``Q_j`` of its noise-free features about
the server's centre ``c_j`` (:class:`~fl_cem.cem.MixtureStats`). The server thus learns each
of the client's cluster means ``c_j + S_j / n_j`` and covariances exactly. This is the attack
of Wang et al., "Beyond inferring class representatives" (INFOCOM 2019) on a new channel: a
white-box curious server (Sec. 3.1 of the CEM paper) trains the decoding attack
(:class:`DecoderAttack`) on auxiliary images passed through the client's own feature code (the
features the statistics are of, without the wire's noise), draws features from each uploaded
cluster Gaussian, decodes them, and averages the decoded images, weighted by the counts, into
one prototype per class: an estimate of the class's mean image in the client's data, since a
decoder trained on the MSE estimates ``E[x | z]``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fl_cem.attacks.common import Stream, seeded
from fl_cem.attacks.decoder import DecoderAttack
from fl_cem.attacks.metrics import reconstruction_metrics
from fl_cem.cem import MixtureStats
from fl_cem.registry import register_attack


@register_attack("cem_stats")
class CEMStatsAttack(DecoderAttack):
    """The decoder attack fitted on the channel's features and applied to uploaded cluster statistics.

    Its smashing function is the client's noise-free feature map (what the statistics summarise),
    so :meth:`fit` is the decoder's; :meth:`prototypes` replaces per-image inversion.
    """

    channel = "cem-stats"

    @torch.no_grad()
    def prototypes(self, stats: MixtureStats, num_classes: int, samples: int | None = None) -> tuple[Tensor, Tensor]:
        """One decoded prototype per class from one upload's statistics.

        Each cluster contributes the mean of its decoded draws (``samples``, by default
        ``attack.stats-samples``, from ``N(mean_j, Sigma_j)``; with 0, its decoded mean), weighted within its class by its
        count. Counts and covariances are clamped to be non-negative, so that statistics which
        are not what they claim (a masked upload read as clear) still decode to images.

        Returns
        -------
        tuple[Tensor, Tensor]
            ``(C, *image)`` prototypes in [0, 1] and ``(C,)`` class counts of the upload.
        """
        k = stats.counts.numel() // num_classes
        counts = stats.counts.double().clamp_min(0)
        offset = stats.sums.double() / counts.clamp_min(1)[:, None]
        means = stats.centres.double() + offset
        spread = self._spread(stats, counts, offset)
        samples = self.cfg.stats_samples if samples is None else samples
        decoded = []
        with seeded(self.seed, Stream.INVERT, self.device):
            for j in range(len(means)):
                noise = torch.randn(samples, means.shape[1], dtype=torch.float64) if samples else means.new_zeros(1, means.shape[1])
                z = means[j] + noise @ spread[j].T
                decoded.append(self.invert(z.float().nan_to_num().reshape(-1, *self.smashed_shape)).mean(0))
        images = torch.stack(decoded).reshape(num_classes, k, *self.input_shape)
        weights = counts.reshape(num_classes, k)
        weights = torch.where(weights.sum(1, keepdim=True) > 0, weights, torch.ones_like(weights))
        weights = (weights / weights.sum(1, keepdim=True)).to(images)
        return torch.einsum("ck,ck...->c...", weights, images), counts.reshape(num_classes, k).sum(1)

    def _spread(self, stats: MixtureStats, counts: Tensor, offset: Tensor) -> Tensor:
        """``(K, d, d)`` square roots of the clusters' covariances (``Q / n - offset offset^T``), PSD-clamped."""
        n = counts.clamp_min(1)
        moments = stats.moments.double()
        d = offset.shape[1]
        if stats.mode == "full":
            cov = moments / n[:, None, None] - offset[:, :, None] * offset[:, None, :]
            values, vectors = torch.linalg.eigh(0.5 * (cov + cov.transpose(1, 2)))
            return vectors * values.clamp_min(0).sqrt()[:, None, :]
        if stats.mode == "diag":
            var = (moments / n[:, None] - offset.square()).clamp_min(0)
        else:
            var = ((moments / n - offset.square().sum(1)) / d).clamp_min(0)[:, None].expand(-1, d)
        return torch.diag_embed(var.sqrt())


def score_prototypes(
    prototypes: Tensor, true_means: Tensor, present: Tensor, aux_images: Tensor, aux_labels: Tensor
) -> dict[str, float]:
    """Prototypes against the client's true class mean images, beside two guesses without the channel.

    Parameters
    ----------
    prototypes, true_means : Tensor
        ``(C, *image)``: decoded prototypes and each class's mean image over the client's data.
    present : Tensor
        ``(C,)`` bool: classes the client holds (only these are scored).
    aux_images, aux_labels : Tensor
        The attacker's own images and labels.

    Returns
    -------
    dict[str, float]
        Over the present classes: ``mse``, ``psnr``, ``ssim`` of the prototypes;
        ``mse_mean_guess``, the attacker's global mean image guessed for every class (the
        no-information baseline of every attack); ``mse_class_mean_guess``, each class's mean
        of the attacker's labelled images (the fair baseline for an attacker that holds labelled
        data of the client's distribution: what the channel adds beyond it); and the ratios
        ``mse_to_mean_image``, ``mse_to_class_mean``.
    """
    present = present.cpu()
    targets = true_means[present].float().cpu()
    guesses = prototypes[present].float().cpu()
    aux = aux_images.float().cpu()
    labels = aux_labels.cpu()
    metrics = reconstruction_metrics(guesses, targets)
    metrics["mse_mean_guess"] = (aux.mean(0, keepdim=True) - targets).square().mean().item()
    class_means = torch.stack([aux[labels == c].mean(0) if bool((labels == c).any()) else aux.mean(0) for c in torch.nonzero(present).flatten().tolist()])
    metrics["mse_class_mean_guess"] = (class_means - targets).square().mean().item()
    for key, base in (("mse_to_mean_image", "mse_mean_guess"), ("mse_to_class_mean", "mse_class_mean_guess")):
        metrics[key] = metrics["mse"] / metrics[base] if metrics[base] > 0 else math.nan
    metrics["classes"] = float(present.sum())
    return metrics


def class_means(images: Tensor, labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """``(C, *image)`` per-class mean images (zeros for absent classes) and the ``(C,)`` presence mask."""
    images = images.float()
    present = torch.bincount(labels.cpu(), minlength=num_classes) > 0
    means = torch.stack([images[labels == c].mean(0) if bool(present[c]) else images.new_zeros(images.shape[1:]) for c in range(num_classes)])
    return means, present
