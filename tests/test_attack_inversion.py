"""Inversion attacks succeed when the smashed data keeps the image and fail when it does not.

Data: 192 attacker + 64 target smooth 8x8 "blob" images (bilinear upsamplings of random 3x3
grids), per-pixel variance about 0.043. The information-keeping encoder is space-to-depth
(``pixel_unshuffle``, 1x8x8 -> 4x4x4), a bijection, so an attack can in principle reach MSE 0.
"""


import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from fl_cem.attacks.base import SmashFn
from fl_cem.attacks.evaluate import make_attack, run_attack
from fl_cem.registry import list_attacks
from fl_cem.config import AttackConfig, Config

CPU = torch.device("cpu")
INPUT = (1, 8, 8)
SMASHED = (4, 4, 4)
# few epochs and one critic step per generator step keep every run under ~2 s on one core
FAST: dict[str, int] = {"epochs": 10, "gan_epochs": 10, "gan_n_critic": 1, "batch_size": 32, "rmle_steps": 200}


def blobs(n: int, seed: int = 0) -> Tensor:
    """Smooth random images in [0, 1]: structured enough to learn, varied enough to have variance."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 1, 3, 3, generator=generator)
    return F.interpolate(coarse, size=INPUT[1:], mode="bilinear", align_corners=True)


def space_to_depth(sigma: float = 0.0) -> SmashFn:
    """The invertible encoder, with Gaussian noise of std ``sigma`` on the wire."""

    def smash(x: Tensor) -> Tensor:
        z = F.pixel_unshuffle(x, 2)
        return z + sigma * torch.randn_like(z)

    return smash


def constant(x: Tensor) -> Tensor:
    """An encoder that forgets its input."""
    return torch.zeros(len(x), *SMASHED, device=x.device)


def attack_mse(name: str, smash: SmashFn, seed: int = 0, **overrides: int) -> dict[str, float]:
    """Metrics of attack ``name`` fitted on 192 blobs and scored on 64 others."""
    images = blobs(256)
    cfg = AttackConfig(name=name, **{**FAST, **overrides})
    attack = make_attack(cfg, smash, INPUT, SMASHED, CPU, seed=seed)
    return run_attack(attack, images[:192], images[192:]).metrics


def test_every_attack_is_registered_and_accepted_by_the_config() -> None:
    # Execute
    names = list_attacks()

    # Assert
    assert names == ["cem_stats", "decoder", "fora", "gan", "rmle", "unsplit"]
    for name in names:
        assert Config.from_flat({"attack.name": name}).attack.name == name


def test_decoder_inverts_an_information_keeping_encoder() -> None:
    # Execute
    metrics = attack_mse("decoder", space_to_depth())

    # Assert: a quarter of the mean-guess MSE (~0.041) would already be leakage; 10 epochs reach < 0.01
    assert metrics["mse"] < 0.01


@pytest.mark.parametrize("name", ["gan", "rmle"])
def test_gan_and_rmle_beat_the_constant_guess_on_an_invertible_encoder(name: str) -> None:
    # Execute
    metrics = attack_mse(name, space_to_depth())

    # Assert
    assert metrics["mse"] < 0.5 * metrics["mse_mean_guess"]


@pytest.mark.parametrize("name", ["decoder", "gan", "rmle"])
def test_no_attack_beats_the_mean_guess_against_a_constant_encoder(name: str) -> None:
    # Execute
    metrics = attack_mse(name, constant, epochs=5, gan_epochs=5, rmle_steps=50)

    # Assert: with z carrying nothing, the best guess is the mean image; allow a 5% finite-sample margin
    assert metrics["mse"] > 0.95 * metrics["mse_mean_guess"]


def test_more_noise_on_the_wire_gives_higher_decoder_mse() -> None:
    # Execute
    mses = [attack_mse("decoder", space_to_depth(sigma), epochs=10)["mse"] for sigma in (0.0, 0.3, 1.0)]

    # Assert
    assert mses[0] < mses[1] < mses[2]


@pytest.mark.parametrize("name", ["decoder", "gan", "rmle"])
def test_a_seed_makes_a_noisy_run_repeatable(name: str) -> None:
    # Execute
    first = attack_mse(name, space_to_depth(0.1), epochs=2, gan_epochs=2, rmle_steps=20)
    again = attack_mse(name, space_to_depth(0.1), epochs=2, gan_epochs=2, rmle_steps=20)
    other = attack_mse(name, space_to_depth(0.1), seed=1, epochs=2, gan_epochs=2, rmle_steps=20)

    # Assert
    assert first["mse"] == again["mse"]
    assert other["mse"] != first["mse"]


def test_fit_reports_each_epoch_in_order() -> None:
    # Prepare
    cfg = AttackConfig(name="decoder", epochs=3, batch_size=64)
    attack = make_attack(cfg, space_to_depth(), INPUT, SMASHED, CPU)
    seen: list[tuple[int, set[str]]] = []

    # Execute
    final = attack.fit(blobs(128), on_epoch=lambda epoch, metrics: seen.append((epoch, set(metrics))))

    # Assert
    assert seen == [(1, {"loss", "val_mse"}), (2, {"loss", "val_mse"}), (3, {"loss", "val_mse"})]
    assert set(final) == {"loss", "val_mse", "best_epoch"}


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_decoder_keeps_the_epoch_with_the_lowest_validation_mse(schedule: str) -> None:
    # Prepare: a learning rate high enough that later epochs can be worse than earlier ones
    cfg = AttackConfig(name="decoder", epochs=6, batch_size=32, lr=0.05, validation=0.25, schedule=schedule)
    attack = make_attack(cfg, space_to_depth(0.1), INPUT, SMASHED, CPU)
    curve: list[float] = []

    # Execute
    final = attack.fit(blobs(128), on_epoch=lambda epoch, metrics: curve.append(metrics["val_mse"]))

    # Assert: the returned network is the best epoch's, by the attacker's own held-out images
    assert final["best_epoch"] == 1 + curve.index(min(curve))
    assert final["val_mse"] == min(curve)


def test_gan_trains_for_gan_epochs_and_logs_the_critic() -> None:
    # Prepare
    cfg = AttackConfig(name="gan", epochs=1, gan_epochs=2, gan_n_critic=1, batch_size=64)
    attack = make_attack(cfg, space_to_depth(), INPUT, SMASHED, CPU)
    epochs: list[int] = []

    # Execute
    final = attack.fit(blobs(128), on_epoch=lambda epoch, metrics: epochs.append(epoch))

    # Assert
    assert epochs == [1, 2]
    assert set(final) == {"loss", "critic_loss", "wasserstein", "val_mse", "best_epoch"}


def test_fitting_leaves_the_callers_random_state_alone() -> None:
    # Prepare
    attack = make_attack(AttackConfig(epochs=1, batch_size=64), space_to_depth(0.1), INPUT, SMASHED, CPU)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)

    # Execute
    attack.fit(blobs(64))

    # Assert
    assert torch.equal(torch.rand(3), expected)
