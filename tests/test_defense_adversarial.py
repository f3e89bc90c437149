"""The client-side min-max of the adversarial defenses, and the adversary's persistent Adam."""

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fl_cem.config import Config
from fl_cem.defenses.adversarial import AdversarialDefense, ResSFL
from fl_cem.defenses.base import Shapes
from fl_cem.defenses.optim import ModuleAdam
from fl_cem.registry import get_defense

SHAPES = Shapes((3, 8, 8), (4, 4, 4))
SIGMA = 0.025

# name, extra config: the hinge of ResSFL/PATROL is set to 0 so it is active from the start
ADVERSARIAL = [
    ("arl", {}),
    ("arl", {"defense.arl-loss": "perceptual"}),
    ("noise_arl", {}),
    ("ressfl", {"defense.ssim-threshold": 0.0}),
    ("patrol", {"defense.ssim-threshold": 0.0}),
]


def tiny_encoder() -> nn.Sequential:
    """(B, 3, 8, 8) -> (B, 4, 4, 4); its first conv widens 3 -> 16, enough for PATROL to prune."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 4, 3, padding=1), nn.BatchNorm2d(4)
    )


def smooth_images(n: int, seed: int) -> torch.Tensor:
    """Images in [0, 1] upsampled from 2x2, so a small decoder can learn to reconstruct them."""
    low = torch.rand(n, 3, 2, 2, generator=torch.Generator().manual_seed(seed))
    return F.interpolate(low, size=(8, 8), mode="bilinear", align_corners=False)


def build(name: str, extra: dict[str, Any]) -> tuple[AdversarialDefense, nn.Module]:
    cfg = Config().replace(**{"defense.name": name, "noise.sigma": SIGMA, **extra})
    torch.manual_seed(0)
    defense = get_defense(name)(cfg, SHAPES)
    assert isinstance(defense, AdversarialDefense)
    return defense, defense.wrap_encoder(tiny_encoder())


@pytest.mark.parametrize(("name", "extra"), ADVERSARIAL)
def test_min_max_works_both_ways(name: str, extra: dict[str, Any]) -> None:
    # Prepare
    defense, encoder = build(name, extra)
    x = smooth_images(8, seed=1)
    eps = SIGMA * torch.randn(8, *SHAPES.smashed, generator=torch.Generator().manual_seed(2))

    def smashed() -> tuple[torch.Tensor, torch.Tensor]:
        z_hat = defense.transform(encoder(x))
        return z_hat, z_hat + eps

    # Execute 1: the adversary trains against a frozen encoder
    with torch.no_grad():
        _, z = smashed()
    adversary_losses = [defense.adversary_step(x, z, z)["loss"] for _ in range(15)]

    # Execute 2: the encoder trains against the frozen adversary, on its privacy term alone
    optimizer = torch.optim.Adam(encoder.parameters(), lr=0.01)
    before = defense.reconstruction_loss(x, smashed()[1])
    privacy = []
    for _ in range(15):
        z_hat, z = smashed()
        loss = defense.client_loss(x, z_hat, z, torch.zeros(8, dtype=torch.long))
        assert loss is not None
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        privacy.append(loss.item())
    after = defense.reconstruction_loss(x, smashed()[1])

    # Assert: the adversary's loss falls when it trains and rises when the encoder does
    assert adversary_losses[-1] < adversary_losses[0]
    assert privacy[-1] < privacy[0]
    assert after > before


def test_client_loss_leaves_adversary_untouched() -> None:
    # Prepare
    defense, encoder = build("noise_arl", {})
    x = smooth_images(8, seed=3)
    z_hat = encoder(x)
    stats = defense.adversary[1].running_mean.clone()

    # Execute
    loss = defense.client_loss(x, z_hat, z_hat + SIGMA * torch.randn_like(z_hat), torch.zeros(8, dtype=torch.long))
    assert loss is not None
    loss.backward()

    # Assert: no gradient, no batch-norm update, and the training mode is restored
    assert all(p.grad is None for p in defense.adversary.parameters())
    assert torch.equal(defense.adversary[1].running_mean, stats)
    assert defense.adversary.training and all(p.requires_grad for p in defense.adversary.parameters())


def test_privacy_term_waits_for_adversary_warmup() -> None:
    # Prepare
    defense, encoder = build("ressfl", {"defense.adversary-warmup": 2})
    x = smooth_images(4, seed=4)
    y = torch.zeros(4, dtype=torch.long)
    with torch.no_grad():
        z = encoder(x)

    # Execute
    during = []
    for _ in range(2):
        during.append(defense.client_loss(x, z, z, y))
        defense.adversary_step(x, z, z)
    after = defense.client_loss(x, z, z, y)

    # Assert
    assert during == [None, None]
    assert after is not None


def test_ressfl_hinge_on_ssim_of_perfect_reconstruction() -> None:
    # Prepare: SSIM(x, x) = 1, so the objective is 1 - 1 = 0 and the hinge is 1 - 0.5 = 0.5
    defense = ResSFL(Config().replace(**{"defense.ssim-threshold": 0.5}), SHAPES)
    x = smooth_images(4, seed=5)

    # Execute
    objective = defense.adversary_objective(x, x)
    term = defense.privacy_term(x, x)

    # Assert
    assert objective.item() == pytest.approx(0.0, abs=1e-5)
    assert term.item() == pytest.approx(0.5, abs=1e-5)


def test_module_adam_matches_torch_adam() -> None:
    # Prepare
    torch.manual_seed(0)
    ours, reference = nn.Linear(3, 2), nn.Linear(3, 2)
    reference.load_state_dict(ours.state_dict())
    adam = ModuleAdam(list(ours.parameters()), lr=0.01)
    torch_adam = torch.optim.Adam(reference.parameters(), lr=0.01)
    batches = [torch.randn(4, 3) for _ in range(5)]

    # Execute
    for batch in batches:
        for model, opt in ((ours, adam), (reference, torch_adam)):
            opt.zero_grad()
            model(batch).pow(2).sum().backward()
            opt.step()

    # Assert
    for p, q in zip(ours.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_state_dict_resumes_the_adversary_exactly() -> None:
    # Prepare: three steps, then the state moves to a fresh defense (a federated message)
    defense, _ = build("noise_arl", {})
    x = smooth_images(8, seed=6)
    z = torch.randn(8, *SHAPES.smashed, generator=torch.Generator().manual_seed(7))
    for _ in range(3):
        defense.adversary_step(x, z, z)
    resumed, _ = build("noise_arl", {})
    resumed.load_state_dict(defense.state_dict())
    weights_only, _ = build("noise_arl", {})
    weights_only.adversary.load_state_dict(defense.adversary.state_dict())

    # Execute
    for d in (defense, resumed, weights_only):
        d.adversary_step(x, z, z)

    # Assert: with the optimizer state the step is identical; without it, it is not
    for p, q, r in zip(defense.adversary.parameters(), resumed.adversary.parameters(), weights_only.adversary.parameters()):
        assert torch.equal(p, q)
    assert not all(torch.equal(p, r) for p, r in zip(defense.adversary.parameters(), weights_only.adversary.parameters()))
