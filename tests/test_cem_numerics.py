"""Degenerate inputs never give NaN/Inf; impossible settings give clear errors."""

from __future__ import annotations

import math

import pytest
import torch

from fl_cem.cem import ConditionalEntropy
from fl_cem.cem.covariance import log_det_ratio
from fl_cem.config import CEMConfig

MODES = ("full", "diag", "isotropic")
VARIANTS = ("paper", "official")


def make_cem(
    mode: str = "diag",
    *,
    variant: str = "paper",
    k: int = 2,
    classes: int = 2,
    n: int = 40,
    sigma: float = 0.025,
    lam: float = 16.0,
) -> ConditionalEntropy:
    cfg = CEMConfig(lam=lam, clusters_per_class=k, covariance=mode, variant=variant)
    return ConditionalEntropy(cfg, sigma, classes, n)


def separated(n_per_cluster: int = 10, dim: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """2 classes x 2 clusters, far apart, ``n_per_cluster`` each."""
    g = torch.Generator().manual_seed(seed)
    offsets = 10.0 * torch.eye(4, dim)
    cluster = torch.arange(4).repeat_interleave(n_per_cluster)
    return offsets[cluster] + 0.5 * torch.randn(len(cluster), dim, generator=g), cluster // 2


def finite_loss_and_grad(
    cem: ConditionalEntropy, z: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    z = z.clone().requires_grad_(True)
    loss = cem.loss(z, labels)
    loss.backward()
    assert z.grad is not None
    return loss.detach(), z.grad


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("mode", MODES)
def test_empty_and_single_sample_clusters_stay_finite(mode: str, variant: str) -> None:
    # Prepare: fit on 40 samples, then a batch of one sample: one cluster gets n_j = 1, three get 0.
    z, labels = separated()
    cem = make_cem(mode, variant=variant)
    cem.refit(z, labels, torch.Generator().manual_seed(0))
    cov_before = cem.cov.clone()

    # Execute
    loss, grad = finite_loss_and_grad(cem, z[:1] + 0.3, labels[:1])

    # Assert
    assert torch.isfinite(loss) and bool(torch.isfinite(grad).all())
    assert bool(torch.isfinite(cem.cov).all()) and bool(torch.isfinite(cem.weights).all())
    changed = (cem.cov != cov_before).reshape(4, -1).any(1)
    assert int(changed.sum()) == (1 if variant == "paper" else 0)  # only the single-sample cluster moves


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("mode", MODES)
def test_zero_variance_features_stay_finite(mode: str, variant: str) -> None:
    # Prepare: every feature identical, so all covariances are 0 and k-means++ has no spread.
    z = torch.ones(12, 2, 3, 3)
    labels = torch.tensor([0, 1] * 6)
    cem = make_cem(mode, variant=variant, k=3, n=12)

    # Execute
    cem.refit(z, labels, torch.Generator().manual_seed(0))
    loss, grad = finite_loss_and_grad(cem, z[:4], labels[:4])
    report = cem.report(data_dim=12, data_var=0.05)

    # Assert
    assert torch.isfinite(loss) and bool(torch.isfinite(grad).all())
    assert all(torch.isfinite(torch.tensor(v)) for v in report.values())
    assert torch.all(cem.cov == 0)


@pytest.mark.parametrize("mode", MODES)
def test_dimension_larger_than_batch_stays_finite(mode: str) -> None:
    # Prepare: d = 96 features, batches of 3; full covariances are rank <= 3 before + sigma^2 I.
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(2).repeat_interleave(8)
    z = torch.randn(16, 96, generator=g) + labels[:, None].float()
    cem = make_cem(mode, n=16)
    cem.refit(z, labels, torch.Generator().manual_seed(0))

    # Execute
    loss, grad = finite_loss_and_grad(cem, z[:3], labels[:3])

    # Assert
    assert torch.isfinite(loss) and bool(torch.isfinite(grad).all())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", MODES)
def test_half_precision_input_gives_float32_loss(mode: str, dtype: torch.dtype) -> None:
    # Prepare
    z, labels = separated()
    cem = make_cem(mode)
    cem.refit(z.to(dtype), labels, torch.Generator().manual_seed(0))
    reference = make_cem(mode)
    reference.load_state_dict(cem.state_dict())
    half = z[:8].to(dtype).requires_grad_(True)

    # Execute
    loss = cem.loss(half, labels[:8])
    loss.backward()
    expected = reference.loss(half.detach().float(), labels[:8])

    # Assert
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert half.grad is not None and half.grad.dtype == dtype and bool(torch.isfinite(half.grad).all())
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_extreme_scales_stay_finite(mode: str) -> None:
    # Prepare: huge features against a tiny noise level.
    z, labels = separated()
    cem = make_cem(mode, sigma=1e-6)
    cem.refit(1e4 * z, labels, torch.Generator().manual_seed(0))

    # Execute
    loss, grad = finite_loss_and_grad(cem, 1e4 * z[:8], labels[:8])

    # Assert
    assert torch.isfinite(loss) and bool(torch.isfinite(grad).all())


def test_zero_sigma_with_paper_variant_and_lambda_is_rejected() -> None:
    # Prepare / Execute / Assert
    with pytest.raises(ValueError, match="noise.sigma > 0"):
        make_cem(sigma=0.0)


def test_zero_sigma_with_lambda_zero_reports_infinite_bound() -> None:
    # Prepare
    z, labels = separated()
    cem = make_cem(sigma=0.0, lam=0.0)
    cem.refit(z, labels, torch.Generator().manual_seed(0))

    # Execute
    report = cem.report(data_dim=16, data_var=0.05)

    # Assert
    assert report["lc"] == float("inf") and report["hxz_relative"] == float("-inf")
    assert report["mse_lower_bound"] == 0.0
    with pytest.raises(ValueError, match="noise.sigma > 0"):
        cem.loss(z, labels)


def test_zero_sigma_official_variant_trains() -> None:
    # Prepare: the official hinge threshold is log(0 + gamma), finite.
    z, labels = separated()
    cem = make_cem(variant="official", sigma=0.0)
    cem.refit(z, labels, torch.Generator().manual_seed(0))

    # Execute
    loss, grad = finite_loss_and_grad(cem, z[:8], labels[:8])

    # Assert
    assert torch.isfinite(loss) and loss > 0 and bool(torch.isfinite(grad).all())


def test_more_clusters_than_class_samples_is_rejected() -> None:
    # Prepare: class 1 has 2 samples, k = 3.
    z = torch.randn(7, 4)
    labels = torch.tensor([0, 0, 0, 0, 0, 1, 1])
    cem = make_cem(k=3, n=7)

    # Execute / Assert
    with pytest.raises(ValueError, match="cem.clusters-per-class"):
        cem.refit(z, labels, torch.Generator().manual_seed(0))


def test_batch_larger_than_dataset_is_rejected() -> None:
    # Prepare
    z, labels = separated()
    cem = make_cem(n=40)
    cem.refit(z, labels, torch.Generator().manual_seed(0))
    cem.dataset_size = 8

    # Execute / Assert
    with pytest.raises(ValueError, match="dataset size"):
        cem.loss(z[:9], labels[:9])


def test_loss_before_fit_is_an_error() -> None:
    # Prepare
    cem = make_cem()

    # Execute / Assert
    with pytest.raises(RuntimeError, match="refit"):
        cem.loss(torch.zeros(2, 4), torch.tensor([0, 1]))
    assert not cem.fitted and cem.report() == {}


def test_labels_out_of_range_are_rejected() -> None:
    # Prepare
    cem = make_cem()

    # Execute / Assert
    with pytest.raises(ValueError, match="labels"):
        cem.refit(torch.zeros(4, 2), torch.tensor([0, 1, 2, 0]), torch.Generator())


def test_full_log_det_survives_rounding_indefinite_covariance() -> None:
    # Prepare: eigenvalues 1 (x63) and -0.001 with sigma = 0.025: I + Sigma / sigma^2 has
    # eigenvalues 1601 and -0.6, which a plain Cholesky rejects. Clamping the negative
    # eigenvalue to 0 gives the exact ratio 63 * log(1601).
    q, _ = torch.linalg.qr(torch.randn(64, 64, generator=torch.Generator().manual_seed(0)))
    cov = (q * torch.cat([torch.ones(63), torch.tensor([-0.001])])) @ q.T
    assert torch.linalg.cholesky_ex(torch.eye(64) + cov / 0.025**2).info > 0

    # Execute
    ratio = log_det_ratio(cov[None], "full", 64, 0.025)

    # Assert
    assert torch.isfinite(ratio).all()
    assert ratio.item() == pytest.approx(63 * math.log(1601), rel=1e-3)


def test_full_log_det_of_nan_covariance_is_an_error() -> None:
    # Prepare
    cov = torch.full((1, 3, 3), float("nan"))

    # Execute / Assert
    with pytest.raises(RuntimeError, match="not finite"):
        log_det_ratio(cov, "full", 3, 0.1)
