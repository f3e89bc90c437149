"""Distance correlation (NoPeek) against a direct double-loop computation, and its defenses."""

import numpy as np
import pytest
import torch

from fl_cem.config import Config
from fl_cem.defenses.base import Shapes
from fl_cem.defenses.distcorr import DistCorr, NoiseNoPeek, distance_correlation


def reference_dcor(x: np.ndarray, z: np.ndarray) -> float:
    """Szekely et al. (2007) sample distance correlation, written out with explicit loops."""
    n = x.shape[0]
    a = np.zeros((n, n))
    b = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            a[i, j] = np.sqrt(np.sum((x[i] - x[j]) ** 2))
            b[i, j] = np.sqrt(np.sum((z[i] - z[j]) ** 2))
    big_a = np.zeros((n, n))
    big_b = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            big_a[i, j] = a[i, j] - a[i, :].mean() - a[:, j].mean() + a.mean()
            big_b[i, j] = b[i, j] - b[i, :].mean() - b[:, j].mean() + b.mean()
    dcov2 = dvar2_x = dvar2_z = 0.0
    for i in range(n):
        for j in range(n):
            dcov2 += big_a[i, j] * big_b[i, j] / n**2
            dvar2_x += big_a[i, j] ** 2 / n**2
            dvar2_z += big_b[i, j] ** 2 / n**2
    return float(np.sqrt(dcov2 / np.sqrt(dvar2_x * dvar2_z)))


def test_distance_correlation_matches_double_loop_reference() -> None:
    # Prepare
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 2, 3, 3))
    z = np.tanh(x.reshape(7, -1)[:, :5]) + 0.5 * rng.normal(size=(7, 5))
    expected = reference_dcor(x.reshape(7, -1), z)

    # Execute
    got = distance_correlation(torch.from_numpy(x), torch.from_numpy(z))

    # Assert
    assert 0 < expected < 1
    assert got.item() == pytest.approx(expected, rel=1e-9)


def test_distance_correlation_is_one_for_a_similarity_transform() -> None:
    # Prepare: z = 3 x + 2 scales every pairwise distance by 3, so dCor = 1 exactly
    x = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    # Execute
    got = distance_correlation(x, 3 * x + 2)

    # Assert
    assert got.item() == pytest.approx(1.0, abs=1e-12)


def test_distance_correlation_has_finite_gradient_with_duplicate_samples() -> None:
    # Prepare: two identical rows give a zero distance off the diagonal too
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(2))
    x[1] = x[0]
    z = torch.randn(5, 4, generator=torch.Generator().manual_seed(3), requires_grad=True)

    # Execute
    distance_correlation(x, z).backward()

    # Assert
    assert z.grad is not None and torch.isfinite(z.grad).all()


@pytest.mark.parametrize("cls", [DistCorr, NoiseNoPeek])
def test_nopeek_loss_is_weighted_dcor_of_input_and_noise_free_features(cls: type[DistCorr]) -> None:
    # Prepare
    cfg = Config().replace(**{"defense.distcorr-weight": 0.3})
    defense = cls(cfg, Shapes((1, 2, 2), (3, 1, 1)))
    gen = torch.Generator().manual_seed(4)
    x, z_hat = torch.rand(6, 1, 2, 2, generator=gen), torch.randn(6, 3, 1, 1, generator=gen)
    z = torch.randn(6, 3, 1, 1, generator=gen)  # unrelated "noisy" features: must be ignored

    # Execute
    loss = defense.client_loss(x, z_hat, z, torch.zeros(6, dtype=torch.long))

    # Assert
    assert loss.item() == pytest.approx(0.3 * distance_correlation(x, z_hat).item(), rel=1e-6)


def test_noise_nopeek_adds_laplacian_noise_of_its_scale_in_every_mode() -> None:
    # Prepare: Titcombe et al.'s noise, independent of the Gaussian noise.sigma (here 0)
    cfg = Config().replace(**{"noise.sigma": 0.0, "defense.laplace-scale": 0.2})
    defense = NoiseNoPeek(cfg, Shapes((1, 2, 2), (8, 16, 16)))
    z_raw = torch.ones(64, 8, 16, 16)

    for mode in (True, False):
        defense.train(mode)
        torch.manual_seed(0)
        # Execute
        noise = defense.transform(z_raw) - z_raw
        # Assert: Laplace(0, b) has mean 0, mean |.| b and variance 2 b^2
        assert noise.mean().item() == pytest.approx(0.0, abs=0.005)
        assert noise.abs().mean().item() == pytest.approx(0.2, rel=0.02)
        assert noise.var().item() == pytest.approx(2 * 0.2**2, rel=0.05)
    torch.manual_seed(0)
    assert torch.equal(defense.transform(z_raw), defense.transform(z_raw)) is False
