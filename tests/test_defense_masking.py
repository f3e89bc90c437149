"""Dropout and top-k on the smashed data."""

import math

import pytest
import torch

from fl_cem.config import Config
from fl_cem.defenses.base import Shapes
from fl_cem.defenses.masking import Dropout, TopK, topk_mask

SHAPES = Shapes((3, 8, 8), (4, 4, 4))


def dropout_defense(p: float) -> Dropout:
    return Dropout(Config().replace(**{"defense.dropout": p}), SHAPES)


@pytest.mark.parametrize("training", [True, False])
def test_dropout_zeroes_expected_fraction_in_training_and_evaluation(training: bool) -> None:
    # Prepare: 64 * 64 = 4096 draws; the std of the zero fraction is sqrt(0.3 * 0.7 / 4096) = 0.0072
    defense = dropout_defense(0.3).train(training)
    torch.manual_seed(0)

    # Execute
    out = defense.transform(torch.ones(64, 4, 4, 4))

    # Assert: within 4 standard deviations, and survivors are not rescaled
    assert (out == 0).float().mean().item() == pytest.approx(0.3, abs=0.03)
    assert set(out.unique().tolist()) == {0.0, 1.0}


def test_dropout_mask_is_reproducible_from_the_seed() -> None:
    # Prepare: the federated client recomputes its forward pass from the batch seed
    defense = dropout_defense(0.5)
    z = torch.randn(8, 4, 4, 4)

    # Execute
    torch.manual_seed(7)
    first = defense.transform(z)
    torch.manual_seed(7)
    second = defense.transform(z)

    # Assert
    assert torch.equal(first, second)


def test_topk_keeps_largest_magnitudes_of_hand_example() -> None:
    # Prepare: k = ceil(0.4 * 6) = 3 -> keep -5, 4 and 3
    z = torch.tensor([[1.0, -5.0, 3.0, 0.5, -2.0, 4.0]])

    # Execute
    out = topk_mask(z, 0.4)

    # Assert
    assert out.tolist() == [[0.0, -5.0, 3.0, 0.0, 0.0, 4.0]]


def test_topk_defense_keeps_exactly_k_per_sample() -> None:
    # Prepare: 64 elements per sample, k = ceil(0.3 * 64) = 20
    defense = TopK(Config().replace(**{"defense.topk": 0.3}), SHAPES)
    z = torch.randn(5, 4, 4, 4, generator=torch.Generator().manual_seed(1))

    # Execute
    out = defense.eval().transform(z)

    # Assert
    kept = (out != 0).flatten(1).sum(dim=1)
    assert kept.tolist() == [math.ceil(0.3 * 64)] * 5
    smallest_kept = out.flatten(1).abs().masked_fill(out.flatten(1) == 0, float("inf")).min(dim=1).values
    largest_dropped = z.flatten(1).abs().masked_fill(out.flatten(1) != 0, 0).max(dim=1).values
    assert (smallest_kept >= largest_dropped).all()
