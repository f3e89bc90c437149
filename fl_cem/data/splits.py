"""Train / validation / test splits of a run, with the pixel statistics of its training split."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fl_cem.cem.bound import gaussian_entropy_full
from fl_cem.config import DataConfig
from fl_cem.data import rng
from fl_cem.data.imageset import ImageSet, stratified_split
from fl_cem.data.sources import load_source

TEST_FRACTION = 0.2
"""Share carved out as the test split when a source has none (digits, a single ImageFolder tree)."""

_FIXED_SEED = 0
_STATS_CHUNK = 4096
ENTROPY_IMAGES = 4096
"""Training images behind :attr:`DataSplits.pixel_entropy`, evenly spaced over the split: more than
CIFAR's 3072 pixels, and with the covariance shrinkage 4096 and 8192 images change its
``|S|^(1/d)`` by 4 % (``fl_cem.cem.bound.COVARIANCE_SHRINKAGE``), for a few seconds of float64 work on one core."""


@dataclass(frozen=True)
class DataSplits:
    """The three splits of a run and what models, attacks and reports need to know about them.

    ``test`` is never used for model selection; ``val`` is. Pixels stay uint8 in [0, 255]
    here and become [0, 1] in the loader; normalisation is the model's first layer, so
    attacks and metrics work in [0, 1] pixel space.
    """

    train: ImageSet
    val: ImageSet
    test: ImageSet
    classes: list[str]
    num_classes: int
    shape: tuple[int, int, int]
    """``(C, H, W)`` of one image."""
    natural: bool
    """Whether a horizontal flip keeps the label (False for digits)."""
    mean: tuple[float, ...]
    """Per-channel mean of the training split in [0, 1] pixel units."""
    std: tuple[float, ...]
    """Per-channel standard deviation of the training split in [0, 1] pixel units."""
    pixel_var: float
    """Variance of each pixel across training images, averaged over pixels: the MSE of
    reconstructing every image by the mean image, the scale for reconstruction errors."""

    @functools.cached_property
    def pixel_entropy(self) -> float:
        """Entropy (nats) of a Gaussian with the training split's shrunk full pixel covariance in [0, 1]
        pixel space, from :data:`ENTROPY_IMAGES` images: the tighter ``H(x)`` estimate of Theorem 1
        (:func:`fl_cem.cem.bound.gaussian_entropy_full`). Computed on first use, once per process."""
        images = self.train.images
        picked = torch.linspace(0, len(images) - 1, min(len(images), ENTROPY_IMAGES)).round().long().unique()
        return gaussian_entropy_full(images[picked].flatten(1).double() / 255)


@functools.lru_cache(maxsize=8)
def load_splits(cfg: DataConfig, seed: int) -> DataSplits:
    """Load the source of ``cfg`` and cut the run's train / validation / test splits.

    Every cut is stratified by class. The test split (carved with a fixed seed when the source
    has none) and the test subset do not depend on ``seed``, so runs with different seeds are
    scored on the same images; the train subset and the validation carve do. The result is
    cached per process, so the tensors are shared: do not modify them in place.

    Parameters
    ----------
    cfg : DataConfig
        The ``data`` section of the run config.
    seed : int
        The run seed (``run.seed``).

    Returns
    -------
    DataSplits
        The splits and their statistics.
    """
    root = Path(cfg.root).expanduser() if cfg.root else None
    source = load_source(cfg.source, root, cfg.download, cfg.image_size)
    train, test = source.train, source.test
    if test is None:
        held = round(len(train) * TEST_FRACTION)
        rest, picked = stratified_split(train.labels, held, rng.generator(_FIXED_SEED, rng.TEST_SPLIT))
        train, test = train.subset(rest), train.subset(picked)
    if cfg.test_subset:
        generator = rng.generator(_FIXED_SEED, rng.TEST_SUBSET)
        test = test.subset(_pick("data.test-subset", test, cfg.test_subset, generator))
    if cfg.train_subset:
        generator = rng.generator(seed, rng.TRAIN_SUBSET)
        train = train.subset(_pick("data.train-subset", train, cfg.train_subset, generator))
    held = round(len(train) * cfg.val_fraction)
    rest, picked = stratified_split(train.labels, held, rng.generator(seed, rng.VAL_SPLIT))
    train, val = train.subset(rest), train.subset(picked)
    if len(train) == 0:
        raise ValueError(
            f"the training split is empty: {len(rest) + len(picked)} images with data.val-fraction = {cfg.val_fraction}"
        )
    mean, std, pixel_var = pixel_statistics(train.images)
    return DataSplits(
        train=train,
        val=val,
        test=test,
        classes=source.classes,
        num_classes=len(source.classes),
        shape=train.shape,
        natural=source.natural,
        mean=mean,
        std=std,
        pixel_var=pixel_var,
    )


def _pick(key: str, data: ImageSet, count: int, generator: torch.Generator) -> torch.Tensor:
    if count > len(data):
        raise ValueError(f"{key} = {count} exceeds the {len(data)} images available")
    return stratified_split(data.labels, count, generator)[1]


def pixel_statistics(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...], float]:
    """Per-channel mean and std, and the mean per-pixel variance, of uint8 images in [0, 1] units.

    Sums are exact integers (squares of uint8 fit in uint16), taken over chunks: no float copy
    of the whole split (600 MB for CIFAR) and no rounding in float sums over 10^8 values.

    Parameters
    ----------
    images : Tensor
        uint8 images ``(N, C, H, W)``, ``N >= 1``.

    Returns
    -------
    tuple[tuple[float, ...], tuple[float, ...], float]
        ``(mean, std, pixel_var)``; ``std`` is the population standard deviation.
    """
    array = images.cpu().numpy()
    n, channels, height, width = array.shape
    pixel_sum = array.sum(0, dtype=np.int64)  # (C, H, W)
    channel_sq_sum = np.zeros(channels, dtype=np.int64)
    for start in range(0, n, _STATS_CHUNK):
        squares = array[start : start + _STATS_CHUNK].astype(np.uint16)
        squares *= squares
        channel_sq_sum += squares.sum((0, 2, 3), dtype=np.int64)
    per_channel = n * height * width * 255.0**2
    pixel_mean = pixel_sum / (n * 255.0)
    channel_mean = pixel_mean.mean((1, 2))
    channel_var = np.clip(channel_sq_sum / per_channel - channel_mean**2, 0, None)
    # Mean over pixels of E[x^2] - E[x]^2; the E[x^2] terms average to the channels' mean.
    pixel_var = channel_sq_sum.sum() / (per_channel * channels) - float((pixel_mean**2).mean())
    return tuple(channel_mean.tolist()), tuple(np.sqrt(channel_var).tolist()), max(float(pixel_var), 0.0)
