"""Image containers and the stratified index split every subset and carve goes through."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class ImageSet:
    """Images as uint8 ``(N, C, H, W)`` with int64 labels ``(N,)``.

    uint8 is four times smaller than float32, so a whole CIFAR split (150 MB) can sit on the
    device and batches are cut from it by index (style.md section 6, after airbench's
    ``CifarLoader``). Subsets are taken by index tensors; the tensors are shared, never
    modify them in place.
    """

    images: Tensor
    labels: Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(
                f"ImageSet.images must be a uint8 (N, C, H, W) tensor; got {self.images.dtype} "
                f"of shape {tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.shape != self.images.shape[:1]:
            raise ValueError(
                f"ImageSet.labels must be an int64 tensor of shape ({self.images.shape[0]},); got "
                f"{self.labels.dtype} of shape {tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return self.labels.shape[0]

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        channels, height, width = self.images.shape[1:]
        return channels, height, width

    def subset(self, idx: Tensor) -> ImageSet:
        """The images at positions ``idx`` (a copy of those rows, labels kept aligned)."""
        idx = idx.to(self.images.device)
        return ImageSet(self.images[idx], self.labels[idx])

    def to(self, device: torch.device) -> ImageSet:
        """This set on ``device``; free when it is already there, so loaders can share one upload."""
        return ImageSet(self.images.to(device), self.labels.to(device))


@dataclass(frozen=True)
class SourceData:
    """What a data source provides before the run's splits are cut."""

    train: ImageSet
    test: ImageSet | None
    """``None`` when the source has no official test split (one is carved from ``train``)."""
    classes: list[str]
    natural: bool
    """Whether a horizontal flip keeps the label (photos: yes; digits: no)."""


def stratified_split(labels: Tensor, count: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Pick ``count`` indices that keep the class proportions of ``labels``.

    Each class gets its proportional share, rounded by the largest-remainder rule so the
    total is exactly ``count``; which samples of a class are picked is random. A stratified
    pick keeps small subsets and validation carves usable for every class, which a uniform
    pick does not guarantee on tiny data.

    Parameters
    ----------
    labels : Tensor
        int64 labels ``(N,)``.
    count : int
        How many indices to pick, ``0 <= count <= N``.
    generator : torch.Generator
        CPU generator that decides which samples of each class are picked.

    Returns
    -------
    tuple[Tensor, Tensor]
        ``(rest, picked)``: sorted int64 index tensors that are disjoint and cover ``0..N-1``.
    """
    label_array = labels.cpu().numpy()
    n = label_array.shape[0]
    if not 0 <= count <= n:
        raise ValueError(f"cannot pick {count} of {n} samples")
    # NumPy for the bookkeeping: these small sorts are single-threaded there, while torch's
    # thread pool costs more than the work on a busy machine.
    classes, counts = np.unique(label_array, return_counts=True)
    quota = counts * count / max(n, 1)
    take = np.floor(quota).astype(np.int64)
    missing = count - int(take.sum())
    if missing:
        by_remainder = np.argsort(-(quota - take), kind="stable")
        take[by_remainder[:missing]] += 1
    # Shuffle, then stable-sort by label: samples are grouped by class in random order within it.
    perm = torch.randperm(n, generator=generator).numpy()
    grouped = perm[np.argsort(label_array[perm], kind="stable")]
    class_of = np.searchsorted(classes, label_array[grouped])
    first_of_class = np.cumsum(counts) - counts
    rank_in_class = np.arange(n) - first_of_class[class_of]
    is_picked = rank_in_class < take[class_of]
    return torch.from_numpy(np.sort(grouped[~is_picked])), torch.from_numpy(np.sort(grouped[is_picked]))
