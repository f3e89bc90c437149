"""Every registered defense constructs, transforms a batch and round-trips its state."""

import pytest
import torch
from torch import nn

from fl_cem.config import Config
from fl_cem.defenses.base import Shapes
from fl_cem.defenses.registry import get_defense, list_defenses

SHAPES = Shapes((3, 8, 8), (4, 4, 4))


def tiny_encoder() -> nn.Sequential:
    """(B, 3, 8, 8) -> (B, 4, 4, 4); its first conv widens 3 -> 16, enough for PATROL to prune."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 4, 3, padding=1), nn.BatchNorm2d(4)
    )


def test_registry_lists_every_table1_defense() -> None:
    # Prepare
    expected = {"none", "bottleneck", "noise", "distcorr", "dropout", "topk", "noise_nopeek", "noise_arl", "ressfl", "patrol", "arl"}

    # Execute
    names = set(list_defenses())

    # Assert
    assert expected <= names


@pytest.mark.parametrize("name", list_defenses())
def test_defense_transforms_batch_and_state_dict_round_trips(name: str) -> None:
    # Prepare
    cfg = Config().replace(**{"defense.name": name})
    torch.manual_seed(0)
    defense = get_defense(name)(cfg, SHAPES)
    encoder = defense.wrap_encoder(tiny_encoder())
    x, y = torch.rand(6, 3, 8, 8), torch.randint(0, 3, (6,))

    # Execute
    z_hat = defense.transform(encoder(x))
    z = z_hat + cfg.noise.sigma * torch.randn_like(z_hat)
    loss = defense.client_loss(x, z_hat, z, y)
    metrics = defense.adversary_step(x, z.detach(), z.detach())
    state = defense.state_dict()
    restored = get_defense(name)(cfg, SHAPES)
    restored.wrap_encoder(tiny_encoder())
    restored.load_state_dict(state)

    # Assert
    assert z_hat.shape == (6, *SHAPES.smashed)
    assert loss is None or (loss.dim() == 0 and torch.isfinite(loss))
    assert all(isinstance(v, float) for v in metrics.values())
    assert all(isinstance(v, torch.Tensor) for v in state.values()), "state must fit a tensor-only ArrayRecord"
    for key, value in restored.state_dict().items():
        assert torch.equal(value, state[key]), key


@pytest.mark.parametrize("name", ["noise", "noise_arl"])
def test_noise_defenses_refuse_zero_sigma(name: str) -> None:
    # Prepare
    cfg = Config().replace(**{"noise.sigma": 0.0})

    # Execute / Assert
    with pytest.raises(ValueError, match="noise.sigma > 0"):
        get_defense(name)(cfg, SHAPES)
