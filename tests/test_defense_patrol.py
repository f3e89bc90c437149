"""PATROL's deeper encoder is pruned back to exactly the original parameter count."""

import torch
from torch import nn
from torch.nn.utils import prune

from fl_cem.config import Config
from fl_cem.defenses.base import Shapes
from fl_cem.defenses.patrol import Patrol, effective_parameter_count, parameter_count

SHAPES = Shapes((3, 8, 8), (4, 4, 4))

# conv 3->16 (432 + 16) + BN (32) + conv 16->4 (576 + 4) + BN (8)
ORIGINAL = 1068
# conv 3->4 (108 + 4) + BN (8) + conv 4->16 (576 + 16) + BN (32) + conv 16->4 (580) + BN (8)
DEEPER = 1332


def tiny_encoder() -> nn.Sequential:
    """(B, 3, 8, 8) -> (B, 4, 4, 4); its first conv widens 3 -> 16, enough for PATROL to prune."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 4, 3, padding=1), nn.BatchNorm2d(4)
    )


def patrol(prune_step: int) -> Patrol:
    return Patrol(Config().replace(**{"defense.name": "patrol", "defense.prune-step": prune_step}), SHAPES)


def test_effective_parameter_count_subtracts_masked_weights() -> None:
    # Prepare: 4 weights, one masked out, plus a bias
    conv = nn.Conv2d(1, 1, 2)
    prune.custom_from_mask(conv, "weight", torch.tensor([[[[1.0, 0.0], [1.0, 1.0]]]]))

    # Execute
    count = effective_parameter_count(conv)

    # Assert
    assert count == 4 - 1 + 1


def test_wrapped_encoder_is_deeper_but_pruned_to_original_size() -> None:
    # Prepare
    original = tiny_encoder()
    x = torch.rand(2, 3, 8, 8)

    # Execute
    wrapped = patrol(prune_step=0).wrap_encoder(original)

    # Assert
    assert parameter_count(original) == ORIGINAL and effective_parameter_count(original) == ORIGINAL
    assert parameter_count(wrapped) == DEEPER
    assert effective_parameter_count(wrapped) == ORIGINAL
    assert sum(isinstance(m, nn.Conv2d) for m in wrapped) == 3
    assert wrapped(x).shape == original(x).shape


def test_pruning_waits_for_prune_step_and_removes_smallest_weights() -> None:
    # Prepare
    defense = patrol(prune_step=2)
    encoder = defense.wrap_encoder(tiny_encoder())
    keys = set(encoder.state_dict())
    x = torch.rand(4, 3, 8, 8)

    # Execute
    with torch.no_grad():
        z = encoder(x)
    defense.adversary_step(x, z, z)
    size_before = effective_parameter_count(encoder)
    defense.adversary_step(x, z, z)

    # Assert: same state keys throughout, so checkpoints and federated messages still load
    assert size_before == DEEPER
    assert effective_parameter_count(encoder) == ORIGINAL
    assert set(encoder.state_dict()) == keys
    convs = [m for m in encoder.modules() if isinstance(m, nn.Conv2d)]
    kept = torch.cat([c.weight_orig[c.weight_mask == 1].abs() for c in convs])
    dropped = torch.cat([c.weight_orig[c.weight_mask == 0].abs() for c in convs])
    assert dropped.numel() == DEEPER - ORIGINAL
    assert dropped.max() <= kept.min()
