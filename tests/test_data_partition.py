"""Client partitions drawn with flwr-datasets' partitioners."""

from __future__ import annotations

import pytest
import torch

from fl_cem.config import PartitionConfig
from fl_cem.data import partition_indices


def _labels(per_class: int, num_classes: int) -> torch.Tensor:
    return torch.arange(per_class * num_classes) % num_classes


def _assert_disjoint_cover(parts: list[torch.Tensor], n: int) -> None:
    everything = torch.cat(parts)
    assert everything.numel() == everything.unique().numel(), "a sample is in two partitions"
    assert sorted(everything.tolist()) == list(range(n))


@pytest.mark.parametrize("partitioner", ["iid", "dirichlet", "pathological"])
def test_partitions_are_disjoint_cover_the_split_and_repeat_by_seed(partitioner):
    # Prepare: 10 classes of 20; with 10 partitions every class is drawn by a pathological split
    labels = _labels(per_class=20, num_classes=10)
    cfg = PartitionConfig(partitioner=partitioner, dirichlet_alpha=0.5, classes_per_partition=2)

    # Execute
    parts = partition_indices(labels, cfg, num_partitions=10, seed=3)
    again = partition_indices(labels, cfg, num_partitions=10, seed=3)
    other = partition_indices(labels, cfg, num_partitions=10, seed=4)

    # Assert
    _assert_disjoint_cover(parts, 200)
    assert all(p.dtype == torch.int64 for p in parts)
    assert [p.tolist() for p in parts] == [p.tolist() for p in again]
    assert [p.tolist() for p in parts] != [p.tolist() for p in other]


def test_iid_sizes_differ_by_at_most_one():
    # Prepare: 100 samples into 3 partitions -> 34, 33, 33
    labels = _labels(per_class=10, num_classes=10)

    # Execute
    parts = partition_indices(labels, PartitionConfig(partitioner="iid"), num_partitions=3, seed=0)

    # Assert
    assert sorted(len(p) for p in parts) == [33, 33, 34]


def test_dirichlet_with_small_alpha_is_skewed():
    # Prepare: 10 classes of 20 over 5 partitions; an even split would give each
    # partition 2 of 10 classes' worth (largest class share about 0.1-0.2)
    labels = _labels(per_class=20, num_classes=10)
    cfg = PartitionConfig(partitioner="dirichlet", dirichlet_alpha=0.1)

    # Execute
    parts = partition_indices(labels, cfg, num_partitions=5, seed=0)

    # Assert: with alpha = 0.1 most of a partition comes from few classes
    top_share = [torch.bincount(labels[p], minlength=10).max().item() / len(p) for p in parts]
    assert sum(top_share) / len(top_share) > 0.4
    assert min(len(p) for p in parts) >= 1


def test_pathological_partitions_hold_exactly_k_classes():
    # Prepare
    labels = _labels(per_class=20, num_classes=10)
    cfg = PartitionConfig(partitioner="pathological", classes_per_partition=3)

    # Execute
    parts = partition_indices(labels, cfg, num_partitions=10, seed=0)

    # Assert
    assert [labels[p].unique().numel() for p in parts] == [3] * 10


def test_pathological_warns_about_classes_no_partition_draws():
    # Prepare: 2 partitions x 2 classes can hold at most 4 of 10 classes -> 6 x 10 samples left out
    labels = _labels(per_class=10, num_classes=10)
    cfg = PartitionConfig(partitioner="pathological", classes_per_partition=2)

    # Execute
    with pytest.warns(UserWarning, match="60 training samples"):
        parts = partition_indices(labels, cfg, num_partitions=2, seed=0)

    # Assert
    assert sum(len(p) for p in parts) == 40


def test_more_partitions_than_samples_is_an_error():
    # Prepare
    labels = _labels(per_class=1, num_classes=5)

    # Execute / Assert
    with pytest.raises(ValueError, match=r"cannot split 5 training samples into 6 partitions"):
        partition_indices(labels, PartitionConfig(), num_partitions=6, seed=0)


def test_more_classes_per_partition_than_classes_names_the_key():
    # Prepare
    labels = _labels(per_class=5, num_classes=3)
    cfg = PartitionConfig(partitioner="pathological", classes_per_partition=4)

    # Execute / Assert
    with pytest.raises(ValueError, match=r"partition\.classes-per-partition = 4 exceeds the 3 classes"):
        partition_indices(labels, cfg, num_partitions=2, seed=0)
