"""A split-learning client's check for a hijacking server: are the gradients it receives all the same size?

An honest server returns dL/dz of a cross-entropy loss. Per sample that is ``J_i^T (p_i - e_{y_i}) / B``,
whose size follows how wrong the server's prediction is: near zero for a sample it already
classifies confidently, large for one it gets wrong. Within a batch the per-sample gradient norms
therefore spread widely, and more so as training sorts samples into easy and hard. Feature-space
hijacking (Pasquini et al., CCS 2021) returns the gradient of a WGAN-GP critic's score instead,
and the gradient penalty (Gulrajani et al. 2017) holds that critic's gradient norm at 1 wherever it
is evaluated: every sample receives a gradient of nearly the same size.

The check reads the coefficient of variation (standard deviation over mean) of the per-sample
gradient norms of each batch the client receives, averages it over the round, and flags the round
when the average is below ``malicious.alarm``. It needs no knowledge of the server's model and
sends nothing extra (SplitGuard, Erdogan et al. WPES 2022, tests the label dependence actively,
with batches of shuffled labels). A server that rescales its gradients per sample at random
would pass it: it detects this attack as published, not every label-blind server.
"""

from __future__ import annotations

from torch import Tensor

DISPERSION = "gradient_norm_cv"
"""Round metric: the mean over the round's batches of the per-sample gradient norms' coefficient of variation."""
CHECKED = "gradient_norm_cv_batches"
"""Running count of the batches that define one, kept beside the sum in the client's round sums."""
ALARM = "hijack_alarm"
"""Round metric: 1.0 when the round's dispersion is below ``malicious.alarm``, else 0.0."""


def norm_dispersion(grads: Tensor) -> float | None:
    """Coefficient of variation of the per-sample norms of the gradient a batch received.

    Parameters
    ----------
    grads : Tensor
        The gradient the server sent for each sample of a batch, (B, ...).

    Returns
    -------
    float | None
        ``std / mean`` of the B norms; ``None`` for a single sample or an all-zero gradient.
    """
    norms = grads.detach().flatten(1).float().norm(dim=1)
    mean = norms.mean()
    if len(norms) < 2 or not mean > 0:
        return None
    return (norms.std() / mean).item()


def round_verdict(sums: dict[str, float], threshold: float) -> dict[str, float]:
    """The round's mean dispersion and alarm from a client's round sums; empty when no batch defined one."""
    checked = sums.get(CHECKED, 0.0)
    if not checked:
        return {}
    dispersion = sums[DISPERSION] / checked
    return {DISPERSION: dispersion, ALARM: float(dispersion < threshold)}
