"""Client partitions of the training split, drawn by flwr-datasets' partitioners.

A partition is an int64 index tensor into the training split (style.md section 6), so every
client's loader cuts its batches from the one uploaded copy of the images.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import Tensor

from fl_cem.config import PartitionConfig
from fl_cem.data import rng


def partition_indices(labels: Tensor, cfg: PartitionConfig, num_partitions: int, seed: int) -> list[Tensor]:
    """Split the training set among ``num_partitions`` clients.

    ``iid`` shuffles with ``seed`` and deals equal shares (sizes differ by at most one).
    ``dirichlet`` gives each client a Dirichlet(alpha) share of every class (Hsu et al., 2019,
    https://arxiv.org/abs/1909.06335), re-drawn until every client holds at least
    ``min(10, N // (4 * num_partitions))`` (and at least one) samples. ``pathological`` gives each client
    exactly ``classes_per_partition`` classes (Li et al., 2022, https://arxiv.org/abs/2102.02079),
    the first one ``client_id % num_classes`` and the rest drawn with ``seed``. A class that no
    client draws is left out: its samples go to no client, since giving them to one would
    break "exactly k classes"; a warning names those classes. With ``num_partitions`` at least
    the number of classes every class is drawn, so nothing is left out.

    Parameters
    ----------
    labels : Tensor
        int64 labels of the training split ``(N,)``.
    cfg : PartitionConfig
        The ``partition`` section (which partitioner and its parameters).
    num_partitions : int
        Number of clients (the federated path takes it from the node config).
    seed : int
        Seed of every random choice; the same seed gives the same partitions.

    Returns
    -------
    list[Tensor]
        One sorted int64 index tensor per client; disjoint, and covering ``0..N-1`` except for
        the classes a pathological split leaves out.
    """
    n = labels.shape[0]
    if num_partitions < 1:
        raise ValueError(f"partition.num-partitions must be >= 1; got {num_partitions}")
    if num_partitions > n:
        raise ValueError(
            f"cannot split {n} training samples into {num_partitions} partitions (partition.num-partitions)"
        )
    # Imported here: flwr-datasets pulls in Hugging Face datasets, seconds of import time that
    # runs without partitions (centralized training, attacks) should not pay.
    from datasets import Dataset
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, PathologicalPartitioner

    label_array = labels.cpu().numpy()
    order = np.arange(n)
    if cfg.partitioner == "iid":
        # IidPartitioner deals contiguous shards, so the rows are shuffled first.
        order = torch.randperm(n, generator=rng.generator(seed, rng.IID_ORDER)).numpy()
        partitioner = IidPartitioner(num_partitions=num_partitions)
    elif cfg.partitioner == "dirichlet":
        partitioner = DirichletPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            alpha=cfg.dirichlet_alpha,
            min_partition_size=max(1, min(10, n // (4 * num_partitions))),
            seed=rng.as_uint64(seed),
        )
    elif cfg.partitioner == "pathological":
        num_classes = len(np.unique(label_array))
        if cfg.classes_per_partition > num_classes:
            raise ValueError(
                f"partition.classes-per-partition = {cfg.classes_per_partition} exceeds the "
                f"{num_classes} classes of the training split"
            )
        partitioner = PathologicalPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            num_classes_per_partition=cfg.classes_per_partition,
            class_assignment_mode="first-deterministic",
            seed=rng.as_uint64(seed),
        )
    else:
        raise ValueError(f"unknown partition.partitioner {cfg.partitioner!r}")
    partitioner.dataset = Dataset.from_dict({"label": label_array[order], "index": order})
    try:
        # The library warns on every Dirichlet re-draw and about unused classes with advice
        # for its own API; the errors and the warning below speak in config keys instead.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parts = [
                torch.from_numpy(np.asarray(partitioner.load_partition(i)["index"], dtype=np.int64)).sort().values
                for i in range(num_partitions)
            ]
    except ValueError as err:
        raise ValueError(
            f"{cfg.partitioner} partitioning of {n} samples into {num_partitions} partitions failed: {err} "
            "(adjust partition.num-partitions, partition.dirichlet-alpha or partition.classes-per-partition)"
        ) from err
    _warn_left_out(labels.cpu(), parts)
    return parts


def _warn_left_out(labels: Tensor, parts: list[Tensor]) -> None:
    """Warn when some training samples are in no partition (pathological splits can do that)."""
    covered = torch.zeros(labels.shape[0], dtype=torch.bool)
    for part in parts:
        covered[part] = True
    if not covered.all():
        missing = labels[~covered]
        warnings.warn(
            f"{missing.numel()} training samples (classes {sorted(torch.unique(missing).tolist())}) are in no "
            f"partition: {len(parts)} partitions drew none of those classes; raise partition.num-partitions "
            "or partition.classes-per-partition to use them",
            stacklevel=3,
        )


def local_test_indices(test_labels: Tensor, partition_labels: Tensor, num_classes: int, seed: int, partition_id: int) -> Tensor:
    """Positions into the test split that follow one client's label distribution.

    The client's "local test" set: as many test images as the test split allows while keeping
    the class proportions of the client's training partition (a class the client does not
    hold does not appear). It is drawn from the shared test split rather than held out of the
    partition, so federated clients train on exactly the images centralized training uses
    and one client still equals centralized training.

    Returns
    -------
    Tensor
        Sorted int64 positions into the test split.
    """
    share = torch.bincount(partition_labels.cpu(), minlength=num_classes).double()
    share /= share.sum()
    available = torch.bincount(test_labels.cpu(), minlength=num_classes).double()
    held = (share > 0) & (available > 0)  # a class absent from the test split cannot be tested
    size = float((available[held] / share[held]).min()) if held.any() else 0.0
    size = min(size, float(len(test_labels)))
    generator = rng.generator(seed, rng.LOCAL_TEST, partition_id)
    picked = []
    for label in torch.nonzero(held).flatten().tolist():
        positions = torch.nonzero(test_labels.cpu() == label).flatten()
        count = min(len(positions), int(round(float(share[label]) * size)))
        picked.append(positions[torch.randperm(len(positions), generator=generator)[:count]])
    return torch.cat(picked).sort().values if picked else torch.zeros(0, dtype=torch.int64)
