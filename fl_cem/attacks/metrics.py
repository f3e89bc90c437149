"""Reconstruction quality: the paper's per-pixel MSE, PSNR and SSIM, and comparison grids.

All measures take images in [0, 1] pixel space, shape (N, C, H, W). The MSE is the one the
paper's tables report (Sec. 5.1) and the one Theorem 1 lower-bounds; PSNR and SSIM are the
supplement's S.10 companions.
"""

from __future__ import annotations

import math

from pathlib import Path

import torch
from torch import Tensor
from torch.nn import functional as F
from torchmetrics.functional.image import structural_similarity_index_measure
from torchvision.utils import make_grid

SSIM_KERNEL = 11
"""Gaussian window of SSIM (Wang et al. 2004): 11x11 with sigma 1.5, shrunk for smaller images."""
SSIM_SIGMA = 1.5


def mse(reconstructions: Tensor, originals: Tensor) -> float:
    """Per-pixel mean squared error in [0, 1] pixel space, averaged over all images (paper Sec. 5.1)."""
    return (reconstructions.float() - originals.float()).pow(2).mean().item()


def psnr(reconstructions: Tensor, originals: Tensor) -> float:
    """Mean over images of ``10 log10(1 / MSE_i)`` (data range 1); ``inf`` when every image is exact.

    Parameters
    ----------
    reconstructions, originals : Tensor
        Images (N, C, H, W) in [0, 1].

    Returns
    -------
    float
        The PSNR in dB, averaged over images (so one exact image does not hide the others).
    """
    per_image = (reconstructions.float() - originals.float()).pow(2).flatten(1).mean(dim=1)
    return (-10 * torch.log10(per_image)).mean().item()


def ssim_window(height: int, width: int) -> tuple[int, float]:
    """The SSIM Gaussian window for an image size: 11 / 1.5, or the largest odd size that fits, sigma scaled alike.

    8x8 digits get a 7x7 window with sigma 1.5 * 7 / 11, so the window never exceeds the image.
    """
    kernel = min(SSIM_KERNEL, height - (height + 1) % 2, width - (width + 1) % 2)
    return kernel, SSIM_SIGMA * kernel / SSIM_KERNEL


def ssim(reconstructions: Tensor, originals: Tensor) -> float:
    """Mean structural similarity (torchmetrics, data range 1) with a window that fits the image.

    Parameters
    ----------
    reconstructions, originals : Tensor
        Images (N, C, H, W) in [0, 1], H and W at least 3.

    Returns
    -------
    float
        SSIM in [-1, 1]; 1 for identical images.
    """
    kernel, sigma = ssim_window(*originals.shape[-2:])
    value = structural_similarity_index_measure(
        reconstructions.float(), originals.float(), data_range=1.0, kernel_size=kernel, sigma=sigma
    )
    assert isinstance(value, Tensor)  # a tuple only with return_full_image or return_contrast_sensitivity
    return value.item()


def reconstruction_metrics(reconstructions: Tensor, originals: Tensor) -> dict[str, float]:
    """MSE, PSNR and SSIM of reconstructions against the originals, ready to log.

    Parameters
    ----------
    reconstructions, originals : Tensor
        Images (N, C, H, W) in [0, 1] on the same device.

    Returns
    -------
    dict[str, float]
        ``{"mse": ..., "psnr": ..., "ssim": ...}``.
    """
    if reconstructions.shape != originals.shape:
        raise ValueError(f"reconstructions {tuple(reconstructions.shape)} and originals {tuple(originals.shape)} differ")
    return {
        "mse": mse(reconstructions, originals),
        "psnr": psnr(reconstructions, originals),
        "ssim": ssim(reconstructions, originals),
    }


def mean_guess_mse(aux_images: Tensor, targets: Tensor) -> float:
    """MSE of guessing every target as the auxiliary images' per-pixel mean: what knowing nothing of z achieves.

    It approaches the data's mean per-pixel variance, the level an attack falls to when the
    smashed data carries no information (H(x|z) = H(x) in Theorem 1).
    """
    guess = aux_images.float().mean(dim=0, keepdim=True)
    return mse(guess.expand_as(targets), targets)


def mse_bound_ratio(measured_mse: float, bound: float) -> float:
    """Measured MSE over the Theorem 1 lower bound; a valid bound keeps the ratio >= 1.

    Parameters
    ----------
    measured_mse : float
        Reconstruction MSE of an attack.
    bound : float
        The lower bound on the MSE from the conditional entropy (paper Eq. 2), > 0.

    Returns
    -------
    float
        ``measured_mse / bound``.
    """
    if not bound > 0:
        raise ValueError(f"the MSE bound must be > 0; got {bound}")
    return measured_mse / bound


def bound_fields(measured_mse: float, bounds: dict[str, float | None]) -> dict[str, float | bool | None]:
    """Each Theorem 1 estimate beside a measured MSE, as an attack outcome records them.

    An MSE below an estimate does not refute Theorem 1: the estimate replaces the unknown
    ``H(x)`` by a Gaussian's entropy, which is too high (:mod:`fl_cem.cem.bound`), and the
    violation says by how much it is.

    Parameters
    ----------
    measured_mse : float
        Reconstruction MSE of an attack.
    bounds : dict[str, float | None]
        Estimate suffix (``""`` isotropic, ``"_full"`` full covariance) -> bound, None where
        none was measured.

    Returns
    -------
    dict[str, float | bool | None]
        Per suffix ``s``: ``mse_lower_bound<s>``, ``mse_bound_ratio<s>`` and ``bound_violated<s>``
        (``measured_mse < bound``); the last two are None without a bound.
    """
    out: dict[str, float | bool | None] = {}
    for suffix, bound in bounds.items():
        out[f"mse_lower_bound{suffix}"] = bound
        out[f"mse_bound_ratio{suffix}"] = mse_bound_ratio(measured_mse, bound) if bound is not None else None
        out[f"bound_violated{suffix}"] = measured_mse < bound if bound is not None else None
    return out


def comparison_grid(originals: Tensor, reconstructions: Tensor, n: int = 8) -> Tensor:
    """Originals in the top row, their reconstructions below: a (3, H', W') float tensor in [0, 1].

    The tensor goes as is to TensorBoard's ``SummaryWriter.add_image`` (CHW) and to :func:`save_comparison`.

    Parameters
    ----------
    originals, reconstructions : Tensor
        Images (N, C, H, W) in [0, 1]; the first ``n`` of each are shown.
    n : int
        Columns of the grid.
    """
    n = min(n, len(originals))
    pair = torch.cat([originals[:n], reconstructions[:n]]).detach().float().cpu().clamp(0, 1)
    return make_grid(pair, nrow=n, padding=2, pad_value=1.0)


def save_comparison(path: str | Path, originals: Tensor, reconstructions: Tensor, n: int = 8, label: str = "") -> Path:
    """Write :func:`comparison_grid` as a PNG a person can read; returns the path.

    Each image is enlarged (nearest neighbour, at least 4x and at least 96 pixels high, so
    32x32 CIFAR images come out at 128) and ``label`` (attack, mode, client, MSE) is written on
    a strip above "originals" over "reconstructions".
    """
    from PIL import Image, ImageDraw

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scale = max(4, math.ceil(96 / originals.shape[-2]))
    grid = comparison_grid(F.interpolate(originals.float(), scale_factor=scale), F.interpolate(reconstructions.float(), scale_factor=scale), n)
    pixels = (grid.permute(1, 2, 0).numpy() * 255).round().astype("uint8")
    strip = 18
    canvas = Image.new("RGB", (pixels.shape[1], pixels.shape[0] + strip), "white")
    canvas.paste(Image.fromarray(pixels), (0, strip))
    ImageDraw.Draw(canvas).text((4, 3), f"{label}  (top: originals, bottom: reconstructions)".strip(), fill="black")
    canvas.save(path)
    return path


__all__ = [
    "bound_fields",
    "comparison_grid",
    "mean_guess_mse",
    "mse",
    "mse_bound_ratio",
    "psnr",
    "reconstruction_metrics",
    "save_comparison",
    "ssim",
    "ssim_window",
]
