"""Per-class k-means++ / Lloyd fitting and the own-class nearest-centre assignment."""

from __future__ import annotations

import pytest
import torch

from fl_cem.cem import ConditionalEntropy, stats
from fl_cem.cem.kmeans import fit_class_centres, kmeans_pp, lloyd
from fl_cem.config import CEMConfig


def two_classes_two_blobs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Class 0 blobs at (0,0) and (10,0); class 1 blobs at (0,10) and (10,10); 15 points each."""
    g = torch.Generator().manual_seed(seed)
    truth = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    blob = torch.arange(4).repeat_interleave(15)
    return truth[blob] + 0.3 * torch.randn(60, 2, generator=g), blob // 2, truth


def test_fit_class_centres_finds_each_class_blobs() -> None:
    # Prepare
    z, labels, truth = two_classes_two_blobs()

    # Execute
    centres = fit_class_centres(z, labels, 2, 2, 10, torch.Generator().manual_seed(0))

    # Assert: rows 0-1 belong to class 0 and rows 2-3 to class 1, each matching its blobs.
    for c in range(2):
        got = sorted(centres[2 * c : 2 * c + 2].tolist())
        assert torch.allclose(torch.tensor(got), truth[2 * c : 2 * c + 2], atol=0.3)


def test_warm_started_refit_does_not_depend_on_the_generator() -> None:
    # Prepare
    z, labels, _ = two_classes_two_blobs()
    cems = [ConditionalEntropy(CEMConfig(clusters_per_class=2), 0.1, 2, 60) for _ in range(2)]
    for cem in cems:
        cem.refit(z, labels, torch.Generator().manual_seed(0))

    # Execute
    cems[0].refit(z + 0.01, labels, torch.Generator().manual_seed(1))
    cems[1].refit(z + 0.01, labels, torch.Generator().manual_seed(2))

    # Assert
    assert torch.equal(cems[0].centres, cems[1].centres)


def test_lloyd_refills_an_empty_cluster() -> None:
    # Prepare: the second start centre is far from every point, so it would stay empty.
    points = torch.tensor([[0.0], [1.0], [10.0], [11.0]])
    start = torch.tensor([[5.0], [100.0]])

    # Execute
    centres = lloyd(points, torch.ones(4), start, 10)

    # Assert
    assert sorted(centres.flatten().tolist()) == pytest.approx([0.5, 10.5])


def test_kmeans_pp_on_identical_points_returns_copies() -> None:
    # Prepare
    points = torch.ones(5, 3)

    # Execute
    centres = kmeans_pp(points, torch.ones(5), 3, torch.Generator().manual_seed(0))

    # Assert
    assert torch.equal(centres, torch.ones(3, 3))


def test_kmeans_pp_never_draws_zero_weight_points() -> None:
    # Prepare: the far point has weight 0, so D^2 sampling must skip it.
    points = torch.tensor([[0.0], [1.0], [1000.0]])
    weights = torch.tensor([1.0, 1.0, 0.0])

    # Execute
    draws = [kmeans_pp(points, weights, 2, torch.Generator().manual_seed(s)) for s in range(20)]

    # Assert
    assert all(1000.0 not in d.flatten().tolist() for d in draws)


def test_assign_picks_nearest_centre_of_own_class_only() -> None:
    # Prepare: a class-1 feature lying on a class-0 centre still goes to class 1's nearer centre.
    centres = torch.tensor([[0.0, 0.0], [5.0, 0.0], [20.0, 0.0], [9.0, 0.0]])
    z = torch.tensor([[0.0, 0.0], [0.0, 0.0], [4.0, 0.0]])
    labels = torch.tensor([0, 1, 0])

    # Execute
    index = stats.assign(z, labels, centres, 2)

    # Assert
    assert index.tolist() == [0, 3, 1]


def test_assign_in_chunks_equals_assign_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare
    z, labels, truth = two_classes_two_blobs()
    whole = stats.assign(z, labels, truth, 2)
    monkeypatch.setattr(stats, "_CHUNK_ELEMENTS", 7)

    # Execute
    chunked = stats.assign(z, labels, truth, 2)

    # Assert
    assert torch.equal(whole, chunked)
