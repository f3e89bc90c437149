"""The reported bounds of Theorems 1-2 against hand computations, and their monotonicity."""

from __future__ import annotations

import math

import pytest
import torch

from fl_cem.cem import ConditionalEntropy
from fl_cem.cem.bound import gaussian_entropy, mse_lower_bound
from fl_cem.config import CEMConfig


def make_cem(mode: str = "isotropic", *, k: int = 1, sigma: float = 0.5, n: int = 100) -> ConditionalEntropy:
    return ConditionalEntropy(CEMConfig(clusters_per_class=k, covariance=mode), sigma, 2, n)


def load_isotropic(cem: ConditionalEntropy, weights: list[float], variances: list[float], counts: list[int]) -> None:
    cem.load_state_dict(
        {
            "centres": torch.zeros(len(weights), 2),
            "weights": torch.tensor(weights),
            "cov": torch.tensor(variances),
            "counts": torch.tensor(counts),
            "epoch_var": torch.tensor(variances),
        }
    )


def test_report_matches_hand_computed_bounds() -> None:
    # Prepare: pi = (1/2, 1/2), Sigma_j = 3/4 I in d = 2, sigma = 1/2:
    # L_C = log 2 + 1/2 * 2 * log(1 + 3) = log 8.
    cem = make_cem()
    load_isotropic(cem, [0.5, 0.5], [0.75, 0.75], [30, 70])

    # Execute
    report = cem.report(data_dim=4, data_var=0.1)

    # Assert
    assert report["lc"] == pytest.approx(math.log(8))
    assert report["hxz_relative"] == pytest.approx(-math.log(8))
    assert report["pi_entropy"] == pytest.approx(math.log(2))
    assert report["hx_gaussian"] == pytest.approx(2 * math.log(2 * math.pi * math.e * 0.1))
    assert report["hxz_absolute"] == pytest.approx(report["hx_gaussian"] - math.log(8))
    assert report["mse_lower_bound"] == pytest.approx(0.1 / math.sqrt(8))  # v_x * exp(-2 L_C / d_x)
    assert (report["clusters"], report["clusters_empty"]) == (2.0, 0.0)
    assert (report["cluster_size_min"], report["cluster_size_max"]) == (30.0, 70.0)


def test_no_leakage_gives_the_prior_variance_as_mse_bound() -> None:
    # Prepare: one occupied cluster with zero covariance: L_C = 0.
    cem = make_cem()
    load_isotropic(cem, [1.0, 0.0], [0.0, 0.0], [100, 0])

    # Execute
    report = cem.report(data_dim=3072, data_var=0.06)

    # Assert
    assert report["lc"] == 0.0
    assert report["mse_lower_bound"] == pytest.approx(0.06)
    assert report["clusters_empty"] == 1.0


def test_theorem1_helpers() -> None:
    # Prepare / Execute / Assert: exp(2 H / d) / (2 pi e) with H the Gaussian entropy is v.
    assert mse_lower_bound(gaussian_entropy(10, 0.25), 10) == pytest.approx(0.25)
    assert mse_lower_bound(float("-inf"), 10) == 0.0
    with pytest.raises(ValueError):
        gaussian_entropy(10, 0.0)


def test_bound_increases_with_sigma() -> None:
    # Prepare
    bounds = []

    # Execute
    for sigma in (0.01, 0.025, 0.1, 0.3):
        cem = make_cem(sigma=sigma)
        load_isotropic(cem, [0.5, 0.5], [0.2, 0.4], [50, 50])
        bounds.append(cem.report(data_dim=12, data_var=0.05))

    # Assert
    relative = [b["hxz_relative"] for b in bounds]
    mse = [b["mse_lower_bound"] for b in bounds]
    assert relative == sorted(relative) and len(set(relative)) == 4
    assert mse == sorted(mse) and len(set(mse)) == 4


@pytest.mark.parametrize("mode", ["full", "diag", "isotropic"])
def test_lc_decreases_and_bound_increases_when_clusters_tighten(mode: str) -> None:
    # Prepare: the same cluster layout with shrinking spread around the centres.
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(2).repeat_interleave(50)
    noise = torch.randn(100, 3, generator=g)
    reports = []

    # Execute
    for spread in (1.0, 0.5, 0.1):
        cem = make_cem(mode, k=1, sigma=0.1)
        cem.refit(5.0 * labels[:, None].float() + spread * noise, labels, torch.Generator().manual_seed(0))
        reports.append(cem.report(data_dim=12, data_var=0.05))

    # Assert: tighter clusters leak less (Sec. 3.4): L_C falls, H(x|z) and the MSE bound rise.
    lc = [r["lc"] for r in reports]
    assert lc[0] > lc[1] > lc[2]
    assert reports[0]["mse_lower_bound"] < reports[1]["mse_lower_bound"] < reports[2]["mse_lower_bound"]


def test_report_gives_coarser_modes_and_their_order() -> None:
    # Prepare: strongly correlated coordinates, where the full model is much tighter.
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(2).repeat_interleave(200)
    base = torch.randn(400, 1, generator=g)
    z = torch.cat([base, base + 0.05 * torch.randn(400, 1, generator=g), 3.0 * base], 1) + 10.0 * labels[:, None]
    cem = make_cem("full", sigma=0.1, n=400)
    cem.refit(z, labels, torch.Generator().manual_seed(0))

    # Execute
    report = cem.report()

    # Assert
    assert set(report) >= {"lc_full", "lc_diag", "lc_isotropic"}
    assert report["lc"] == report["lc_full"] < report["lc_diag"] < report["lc_isotropic"]


def test_diag_mode_reports_no_full_bound() -> None:
    # Prepare
    cem = make_cem("diag")
    cem.load_state_dict(
        {
            "centres": torch.zeros(2, 2),
            "weights": torch.tensor([0.5, 0.5]),
            "cov": torch.ones(2, 2),
            "counts": torch.tensor([1, 1]),
            "epoch_var": torch.ones(2),
        }
    )

    # Execute
    report = cem.report()

    # Assert
    assert "lc_full" not in report and report["lc_diag"] == report["lc"]
    assert report["lc_isotropic"] == pytest.approx(report["lc_diag"])  # equal variances: same bound
