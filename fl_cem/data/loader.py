"""Batches cut on the device from one uint8 upload, after airbench's ``CifarLoader``.

Unlike a ``DataLoader`` over a ``Dataset``, there are no worker processes and no per-sample
Python: the images go to the device once, each batch is one index operation, and crop and flip
run on the whole batch there (style.md section 6). Every random choice is drawn from a stream
keyed by (seed, epoch[, batch]), so an epoch can be replayed after a restart and any batch can
be re-created on its own, which the federated client needs.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from fl_cem.data import rng
from fl_cem.data.imageset import ImageSet


class BatchLoader:
    """Shuffled (and optionally augmented) batches of an :class:`ImageSet` on ``device``.

    Like ``DistributedSampler``, the order changes only through :meth:`set_epoch`: iterating
    twice without it gives the same batches.

    Parameters
    ----------
    data : ImageSet
        Images to batch. Pass ``data.to(device)`` to share one upload among many loaders.
    batch_size : int
        Images per batch; the last batch is smaller unless ``drop_last``.
    device : torch.device
        Where batches are produced; the uint8 images are copied there once.
    shuffle : bool
        Draw a new order every epoch (training) or keep the stored order (evaluation).
    augment : bool
        Random crop with zero padding of ``max(1, size // 8)`` pixels (4 for 32x32, the usual
        CIFAR recipe), plus a horizontal flip when ``flip``. For training batches only.
    flip : bool
        Flip half the images of a batch horizontally; only with ``augment``, and only for
        data where flipping keeps the label (``DataSplits.natural``).
    seed : int
        Seed of the order and the augmentation.
    drop_last : bool
        Leave out a last batch smaller than ``batch_size`` (with fewer samples than
        ``batch_size`` there are no batches at all).
    indices : Tensor | None
        Use only these positions of ``data`` (a client partition), without copying it.
    """

    def __init__(
        self,
        data: ImageSet,
        batch_size: int,
        device: torch.device,
        *,
        shuffle: bool,
        augment: bool = False,
        flip: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        indices: Tensor | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        if indices is not None:
            if indices.dim() != 1 or indices.dtype not in (torch.int32, torch.int64):
                raise ValueError(f"indices must be a 1-D integer tensor; got {indices.dtype} {tuple(indices.shape)}")
            low, high = (int(indices.min()), int(indices.max())) if indices.numel() else (0, 0)
            if low < 0 or high >= max(len(data), 1):
                raise ValueError(f"indices must lie in [0, {len(data)}); got [{low}, {high}]")
            indices = indices.to(device=device, dtype=torch.int64)
        self.images = data.images.to(device)
        self.labels = data.labels.to(device)
        self.indices = indices
        self.num_samples = len(data) if indices is None else indices.numel()
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.shuffle = shuffle
        self.augment = augment
        self.flip = flip
        self.seed = seed
        self.drop_last = drop_last
        self.padding = augment_padding(data.shape)
        self.epoch = 0
        self._order: Tensor | None = None

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order and augmentation the next batches follow."""
        if epoch != self.epoch:
            self.epoch = epoch
            self._order = None

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for i in range(len(self)):
            yield self.batch(i)

    def batch(self, i: int) -> tuple[Tensor, Tensor]:
        """The ``i``-th batch of the current epoch, exactly as iterating would produce it.

        Parameters
        ----------
        i : int
            Batch number, ``0 <= i < len(self)``.

        Returns
        -------
        tuple[Tensor, Tensor]
            Images as float32 in [0, 1] ``(B, C, H, W)`` and int64 labels ``(B,)``, on the device.
        """
        idx = self.batch_indices(i)
        images = self.images[idx]
        if self.augment:
            images = self._crop_and_flip(images, i)
        return images.float().div_(255), self.labels[idx]

    def batch_indices(self, i: int) -> Tensor:
        """Positions into ``data`` of the ``i``-th batch of the current epoch (for replaying what a client sent)."""
        if not 0 <= i < len(self):
            raise IndexError(f"batch {i} out of range for a loader of {len(self)} batches")
        return self._epoch_order()[i * self.batch_size : (i + 1) * self.batch_size]

    def _epoch_order(self) -> Tensor:
        """Positions into the stored images, in this epoch's order; drawn once per epoch."""
        if self._order is None:
            if self.shuffle:
                generator = rng.generator(self.seed, rng.EPOCH_ORDER, self.epoch)
                order = torch.randperm(self.num_samples, generator=generator)
            else:
                order = torch.arange(self.num_samples)
            order = order.to(self.device)
            self._order = order if self.indices is None else self.indices[order]
        return self._order

    def _crop_and_flip(self, images: Tensor, batch_index: int) -> Tensor:
        generator = rng.generator(self.seed, rng.AUGMENT, self.epoch, batch_index)
        return crop_and_flip(images, generator, self.padding, self.flip)


def augment_padding(image_shape: tuple[int, ...]) -> int:
    """Zero padding of the random crop for images ``(C, H, W)``: an eighth of the side, at least 1 (4 for 32x32)."""
    return max(1, min(image_shape[1:]) // 8)


def crop_and_flip(images: Tensor, generator: torch.Generator, padding: int, flip: bool) -> Tensor:
    """Random crop of the zero-padded batch ``images`` (B, C, H, W) and, when ``flip``, a
    horizontal flip of about half of them: a row gather, then a column gather. The training
    batches' augmentation (:class:`BatchLoader`), and a malicious server's copy of it
    (``fl_cem/federated/hijack.py``). ``generator`` is a CPU generator; it draws the shifts, then the flips."""
    size, channels, height, width = images.shape
    device = images.device
    shift = torch.randint(0, 2 * padding + 1, (2, size), generator=generator).to(device)
    flipped = (torch.rand(size, generator=generator) < 0.5).to(device) & flip
    padded = F.pad(images, (padding, padding, padding, padding))
    rows = shift[0, :, None] + torch.arange(height, device=device)  # (B, H)
    cols = torch.arange(width, device=device).expand(size, width)
    # Output column j of a flipped image reads column width-1-j of its crop window.
    cols = torch.where(flipped[:, None], width - 1 - cols, cols) + shift[1, :, None]  # (B, W)
    padded = padded.gather(2, rows[:, None, :, None].expand(size, channels, height, width + 2 * padding))
    return padded.gather(3, cols[:, None, None, :].expand(size, channels, height, width))
