"""The split-learning strategy: reproducible sampling, SplitFed averaging, mask-safe merging."""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

from fl_cem.federated.averaging import average_states
from fl_cem.federated.wire import from_record, to_record
from strategies.split_strategy import SplitLearningStrategy


class Reply:
    """The part of a reply Message the strategy reads (a real reply needs a running Flower run)."""

    def __init__(self, content: RecordDict) -> None:
        self.content = content

    def has_content(self) -> bool:
        return True


def reply(weight: float, mask: list[float], examples: float) -> Reply:
    content = RecordDict(
        {
            "encoder": ArrayRecord({"conv.weight": Array(np.full(2, weight, dtype=np.float32)), "conv.weight_mask": Array(np.array(mask, dtype=np.float32))}),
            "metrics": MetricRecord({"num_examples": examples, "cem_loss": weight}),
        }
    )
    return Reply(content)


def strategy(averages: bool = True, fraction: float = 1.0, sampling: str = "random", fraction_evaluate: float = 1.0) -> SplitLearningStrategy:
    return SplitLearningStrategy(
        fraction, averages, classify=lambda z, y, client: {}, clusters_per_class=1, kmeans_iters=1, seed=3,
        sampling=sampling, fraction_evaluate=fraction_evaluate,
    )


def test_fedavg_weights_by_examples_and_keeps_masks_binary() -> None:
    # Prepare: weights 1 and 4 with 30 and 10 examples -> (1*30 + 4*10) / 40 = 1.75
    replies = [reply(1.0, [1, 0], 30), reply(4.0, [1, 1], 10)]
    # Execute
    encoder, metrics = strategy().aggregate_train(1, replies)
    # Assert
    assert encoder is not None
    np.testing.assert_allclose(encoder["conv.weight"].numpy(), [1.75, 1.75])
    np.testing.assert_array_equal(encoder["conv.weight_mask"].numpy(), [1, 0])
    assert metrics is not None and metrics["cem_loss"] == 1.75 and metrics["num_examples"] == 40


def test_local_sync_returns_no_encoder() -> None:
    encoder, _ = strategy(False).aggregate_train(1, [reply(1.0, [1, 1], 5)])
    assert encoder is None


def test_sampling_is_reproducible_and_sized_by_fraction() -> None:
    nodes = list(range(100, 120))
    first = strategy(fraction=0.25).sample(4, nodes)
    assert len(first) == 5 and set(first) <= set(nodes)
    assert strategy(fraction=0.25).sample(4, nodes) == first
    assert strategy(fraction=0.25).sample(5, nodes) != first


def test_epoch_sampling_trains_every_client_once_per_pass() -> None:
    # Prepare: 1,000 nodes at fraction 0.1 -> 100 a round, a pass of 10 rounds
    nodes = list(range(5000, 6000))
    sampler = strategy(fraction=0.1, sampling="epoch")
    # Execute
    passes = [[sampler.sample(r, nodes) for r in range(first, first + 10)] for first in (1, 11)]
    # Assert: each pass is a partition of the nodes into ten samples of 100, and passes differ
    for rounds in passes:
        assert all(len(picked) == 100 for picked in rounds)
        assert sorted(n for picked in rounds for n in picked) == nodes
    assert passes[0][0] != passes[1][0]
    assert sampler.sample(3, nodes) == strategy(fraction=0.1, sampling="epoch").sample(3, nodes)


def test_epoch_sampling_with_a_short_last_round() -> None:
    # Prepare: 10 nodes at fraction 0.3 -> 3 a round, ceil(10 / 3) = 4 rounds a pass (3, 3, 3, 1)
    nodes = list(range(10))
    sampler = strategy(fraction=0.3, sampling="epoch")
    # Execute
    rounds = [sampler.sample(r, nodes) for r in range(1, 5)]
    # Assert
    assert [len(picked) for picked in rounds] == [3, 3, 3, 1]
    assert sorted(n for picked in rounds for n in picked) == nodes


def test_random_sampling_misses_clients_within_a_pass() -> None:
    # Prepare: Flower's way, an independent draw each round
    nodes = list(range(1000))
    sampler = strategy(fraction=0.1)
    # Execute
    covered = {n for r in range(1, 11) for n in sampler.sample(r, nodes)}
    # Assert: about 1 - 0.9^10 = 65 % of the clients, far from all (binomial sd 1.5 %)
    assert 0.58 < len(covered) / 1000 < 0.72


def test_fraction_evaluate_draws_a_reproducible_share() -> None:
    nodes = list(range(200, 400))
    picked = strategy(fraction_evaluate=0.05).evaluated(2, nodes)
    assert len(picked) == 10 and set(picked) <= set(nodes) and picked == sorted(picked)
    assert strategy(fraction_evaluate=0.05).evaluated(2, nodes) == picked
    assert strategy(fraction_evaluate=0.05).evaluated(3, nodes) != picked
    assert strategy().evaluated(2, nodes) == nodes


def test_flower_average_is_bit_identical_to_the_reference_average() -> None:
    # Prepare: ten clients' float32 encoders with unequal sample counts. A float32 average (as
    # Flower's aggregate_arrayrecords computes it) differs in the last bits, which training at
    # CIFAR scale amplifies into a different run: 0.221 against 0.312 at one seed.
    generator = torch.Generator().manual_seed(0)
    states = [{"conv.weight": torch.randn(64, generator=generator)} for _ in range(10)]
    examples = [float(e) for e in range(45, 55)]
    replies = [Reply(RecordDict({"encoder": to_record(s), "metrics": MetricRecord({"num_examples": e})})) for s, e in zip(states, examples)]
    # Execute
    encoder, _ = strategy().aggregate_train(1, replies)
    # Assert
    assert encoder is not None
    assert torch.equal(from_record(encoder)["conv.weight"], average_states(states, examples)["conv.weight"])
