"""Federated support: exact merging of sufficient statistics, centre combination, state round trips."""

from __future__ import annotations

import pytest
import torch

from fl_cem.cem import ConditionalEntropy, MixtureStats, combine_centres
from fl_cem.config import CEMConfig

MODES = ("full", "diag", "isotropic")


def make_cem(mode: str, n: int = 60, k: int = 2) -> ConditionalEntropy:
    return ConditionalEntropy(CEMConfig(lam=16.0, clusters_per_class=k, covariance=mode), 0.1, 3, n)


def data(n: int = 60, dim: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(3).repeat(n // 3)
    return torch.randn(n, dim, generator=g) + 4.0 * labels[:, None].float(), labels


@pytest.mark.parametrize("mode", MODES)
def test_merging_two_random_halves_equals_the_union(mode: str) -> None:
    # Prepare
    z, labels = data()
    cem = make_cem(mode)
    cem.refit(z, labels, torch.Generator().manual_seed(0))
    half = torch.randperm(60, generator=torch.Generator().manual_seed(1))
    a, b = half[:30], half[30:]

    # Execute
    merged = MixtureStats.merge([cem.local_stats(z[a], labels[a]), cem.local_stats(z[b], labels[b])])
    union = cem.local_stats(z, labels)

    # Assert
    assert torch.equal(merged.counts, union.counts) and int(merged.counts.sum()) == 60
    assert torch.allclose(merged.sums, union.sums, atol=1e-5)
    assert torch.allclose(merged.moments, union.moments, atol=1e-4)
    for got, want in zip(merged.mixture(), union.mixture()):
        assert torch.allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_server_mixture_from_merged_stats_equals_single_machine_mixture(mode: str) -> None:
    # Prepare: the server and two clients share centres; the clients hold disjoint data.
    z, labels = data()
    single = make_cem(mode)
    single.refit(z, labels, torch.Generator().manual_seed(0))
    centres = single.centres.clone()
    clients = [make_cem(mode, n=30), make_cem(mode, n=30)]
    for client in clients:
        client.set_centres(centres)
    server = make_cem(mode)

    # Execute
    parts = [clients[0].local_stats(z[:30], labels[:30]), clients[1].local_stats(z[30:], labels[30:])]
    server.load_stats(MixtureStats.merge(parts))
    single.load_stats(single.local_stats(z, labels))

    # Assert
    for key, value in single.state_dict().items():
        assert torch.allclose(server.state_dict()[key].double(), value.double(), atol=1e-5), key


def test_merge_rejects_different_centres_or_modes() -> None:
    # Prepare
    z, labels = data()
    cem = make_cem("diag")
    cem.refit(z, labels, torch.Generator().manual_seed(0))
    part = cem.local_stats(z, labels)
    moved = MixtureStats(part.centres + 1.0, part.counts, part.sums, part.moments)
    other_mode = MixtureStats(part.centres, part.counts, part.sums, part.moments.sum(1))

    # Execute / Assert
    with pytest.raises(ValueError, match="different centres"):
        MixtureStats.merge([part, moved])
    with pytest.raises(ValueError, match="cannot merge"):
        MixtureStats.merge([part, other_mode])
    with pytest.raises(ValueError, match="isotropic"):
        cem.load_stats(other_mode)


def test_mixture_stats_state_dict_round_trip() -> None:
    # Prepare
    z, labels = data()
    cem = make_cem("full")
    cem.refit(z, labels, torch.Generator().manual_seed(0))
    stats = cem.local_stats(z, labels)

    # Execute
    back = MixtureStats.from_state_dict({k: v.clone() for k, v in stats.state_dict().items()})

    # Assert
    assert back.mode == "full"
    for got, want in zip(back.mixture(), stats.mixture()):
        assert torch.equal(got, want)


def test_combine_centres_recovers_pooled_cluster_means() -> None:
    # Prepare: 1 class, k = 2, true centres at -5 and +5. Client A saw (-5.2: 10 samples,
    # 5.0: 30), client B saw (-4.6: 20, 5.3: 10); the weighted means are -4.8 and 5.075.
    centres_a = torch.tensor([[-5.2], [5.0]])
    centres_b = torch.tensor([[5.3], [-4.6]])
    counts_a, counts_b = torch.tensor([10, 30]), torch.tensor([10, 20])

    # Execute
    combined = combine_centres([centres_a, centres_b], [counts_a, counts_b], 2, 10, torch.Generator().manual_seed(0))

    # Assert
    assert sorted(combined.flatten().tolist()) == pytest.approx([-4.8, 5.075])


def test_combine_centres_leaves_unheld_classes_at_zero() -> None:
    # Prepare: 2 classes x 1 cluster; nobody holds class 1 (count 0).
    centres = [torch.tensor([[1.0, 2.0], [9.0, 9.0]]), torch.tensor([[3.0, 2.0], [7.0, 7.0]])]
    counts = [torch.tensor([1, 0]), torch.tensor([3, 0])]

    # Execute
    combined = combine_centres(centres, counts, 1, 5, torch.Generator().manual_seed(0))

    # Assert
    assert combined.tolist() == [[2.5, 2.0], [0.0, 0.0]]


def test_label_skewed_client_refits_with_absent_classes() -> None:
    # Prepare: a client holding classes 0 and 2 only.
    z, labels = data()
    keep = labels != 1
    cem = make_cem("diag", n=int(keep.sum()))

    # Execute
    cem.refit(z[keep], labels[keep], torch.Generator().manual_seed(0))
    loss = cem.loss(z[keep][:12], labels[keep][:12])

    # Assert
    assert cem.weights[2:4].tolist() == [0.0, 0.0] and cem.counts[2:4].tolist() == [0, 0]
    assert torch.isfinite(loss)


@pytest.mark.parametrize("mode", MODES)
def test_state_dict_round_trip_reproduces_loss_and_report(mode: str) -> None:
    # Prepare
    z, labels = data()
    cem = make_cem(mode)
    cem.refit(z, labels, torch.Generator().manual_seed(0))
    copy = make_cem(mode)
    copy.load_state_dict({k: v.clone() for k, v in cem.state_dict().items()})

    # Execute
    losses = (cem.loss(z[:9], labels[:9]), copy.loss(z[:9], labels[:9]))

    # Assert
    assert losses[0].item() == losses[1].item()
    assert cem.report(75, 0.05) == copy.report(75, 0.05)


def test_unfitted_state_round_trips_as_unfitted() -> None:
    # Prepare
    state = make_cem("diag").state_dict()
    cem = make_cem("diag")

    # Execute
    cem.load_state_dict(state)

    # Assert
    assert not cem.fitted and all(v.numel() == 0 for v in state.values())


def test_load_state_dict_rejects_other_covariance_mode() -> None:
    # Prepare
    z, labels = data()
    full = make_cem("full")
    full.refit(z, labels, torch.Generator().manual_seed(0))

    # Execute / Assert
    with pytest.raises(ValueError, match="cem.covariance"):
        make_cem("diag").load_state_dict(full.state_dict())
