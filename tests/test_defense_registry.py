"""Every registered defense constructs, transforms a batch and round-trips its state."""

import pytest
import torch
from torch import nn

from fl_cem.config import Config
from fl_cem.defenses.base import Shapes
from fl_cem.registry import get_defense, list_defenses

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
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 and not v.requires_grad for v in metrics.values())
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


def test_the_built_in_names_are_exactly_what_their_modules_register() -> None:
    # Prepare: config validation lists names from the map without importing any defense or attack
    import importlib

    from fl_cem.registry import ATTACKS, DEFENSES

    for registry in (DEFENSES, ATTACKS):
        # Execute
        for module in set(registry.builtin.values()):
            importlib.import_module(module)
        registered = {name: cls.__module__ for name, cls in registry._entries.items()}
        # Assert
        assert {name: registered[name] for name in registry.builtin} == registry.builtin


def test_loading_the_config_imports_no_defense_or_attack_module() -> None:
    # Execute: a fresh interpreter loads and validates a config
    import subprocess
    import sys

    code = "import sys; from fl_cem.config import Config; Config(); print(sorted(m for m in sys.modules if m.startswith(('fl_cem.defenses', 'fl_cem.attacks'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    # Assert
    assert out.strip() == "[]"
