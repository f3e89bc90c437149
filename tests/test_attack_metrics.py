"""Reconstruction metrics and comparison grids against hand-computed values."""

import math
from pathlib import Path

import pytest
import torch
from torchvision.io import read_image

from fl_cem.attacks.metrics import (
    comparison_grid,
    mean_guess_mse,
    mse_bound_ratio,
    reconstruction_metrics,
    save_comparison,
    ssim_window,
)


def test_identical_images_have_zero_mse_unit_ssim_and_infinite_psnr() -> None:
    # Prepare
    images = torch.rand(4, 3, 16, 16)

    # Execute
    metrics = reconstruction_metrics(images.clone(), images)

    # Assert
    assert metrics["mse"] == 0.0
    assert metrics["ssim"] == pytest.approx(1.0, abs=1e-6)
    assert math.isinf(metrics["psnr"])


def test_constant_offset_gives_its_mse_and_psnr_exactly() -> None:
    # Prepare: offset 0.1 everywhere -> MSE 0.01 -> PSNR 10 log10(1 / 0.01) = 20 dB
    originals = 0.2 + 0.6 * torch.rand(3, 1, 8, 8, dtype=torch.float64)
    shifted = originals + 0.1

    # Execute
    metrics = reconstruction_metrics(shifted, originals)

    # Assert
    assert metrics["mse"] == pytest.approx(0.01, rel=1e-6)
    assert metrics["psnr"] == pytest.approx(20.0, rel=1e-6)


def test_ssim_is_lower_for_a_worse_reconstruction() -> None:
    # Prepare
    originals = torch.rand(4, 1, 8, 8)
    slightly_off = (originals + 0.05 * torch.randn_like(originals)).clamp(0, 1)
    unrelated = torch.rand(4, 1, 8, 8)

    # Execute
    close = reconstruction_metrics(slightly_off, originals)["ssim"]
    far = reconstruction_metrics(unrelated, originals)["ssim"]

    # Assert
    assert close > far


@pytest.mark.parametrize(
    ("size", "kernel", "sigma"), [((32, 32), 11, 1.5), ((8, 8), 7, 1.5 * 7 / 11), ((9, 16), 9, 1.5 * 9 / 11)]
)
def test_ssim_window_fits_inside_small_images(size: tuple[int, int], kernel: int, sigma: float) -> None:
    # Execute
    got_kernel, got_sigma = ssim_window(*size)

    # Assert
    assert got_kernel == kernel
    assert got_sigma == pytest.approx(sigma)


def test_mismatched_shapes_are_rejected() -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match="differ"):
        reconstruction_metrics(torch.rand(2, 1, 8, 8), torch.rand(3, 1, 8, 8))


def test_mean_guess_mse_scores_the_auxiliary_mean_image() -> None:
    # Prepare: aux mean is 0.5 everywhere, targets are 0 -> MSE 0.25
    aux = torch.stack([torch.zeros(1, 4, 4), torch.ones(1, 4, 4)])
    targets = torch.zeros(3, 1, 4, 4)

    # Execute
    got = mean_guess_mse(aux, targets)

    # Assert
    assert got == pytest.approx(0.25)


def test_mse_bound_ratio_divides_and_rejects_a_non_positive_bound() -> None:
    # Execute / Assert
    assert mse_bound_ratio(0.02, 0.01) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="bound"):
        mse_bound_ratio(0.02, 0.0)


def test_comparison_grid_puts_originals_above_reconstructions() -> None:
    # Prepare: 4 black originals, 4 white reconstructions of 8x8; padding 2 ->
    # width 4 * (8 + 2) + 2 = 42, height 2 * (8 + 2) + 2 = 22
    originals, reconstructions = torch.zeros(6, 1, 8, 8), torch.ones(6, 1, 8, 8)

    # Execute
    grid = comparison_grid(originals, reconstructions, n=4)

    # Assert
    assert grid.shape == (3, 22, 42)
    assert grid[:, 2:10, 2:10].max() == 0.0
    assert grid[:, 12:20, 2:10].min() == 1.0


def test_save_comparison_writes_a_png_of_the_grid(tmp_path: Path) -> None:
    # Prepare
    originals, reconstructions = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)

    # Execute
    path = save_comparison(tmp_path / "attacks" / "grid.png", originals, reconstructions, n=2, label="decoder train client 0 MSE 0.01")

    # Assert: 8x8 images enlarged 12x to 96 px; 2 columns -> 2 * 98 + 2 = 198 wide, 198 high plus an 18 px label strip
    image = read_image(str(path))
    assert image.shape == (3, 198 + 18, 198)
    assert image[:, :18].float().mean() < 255  # the label is drawn
