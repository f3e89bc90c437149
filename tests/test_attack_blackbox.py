"""Black-box attacks (FORA, UnSplit): they invert an information-keeping encoder without its weights,
and no black-box attack can ever run the client's encoder.

Data as in ``test_attack_inversion``: 192 attacker + 64 target smooth 8x8 blobs (mean-image MSE
about 0.041). The victim is space-to-depth (a bijection, 1x8x8 -> 4x4x4); the attacker knows
only its architecture, a 2x2 stride-2 conv (which can express space-to-depth exactly), and
builds it with its own random weights.
"""

import math
from typing import Any, Callable

import pytest
import torch
from torch import Tensor, nn

from fl_cem.attacks.base import BlackBoxAttack, PublicDesign, Threat
from fl_cem.attacks.evaluate import make_attack, run_attack
from fl_cem.attacks.fora import KERNEL_SCALES, mk_mmd
from fl_cem.attacks.run import Victim, attack_run
from fl_cem.config import AttackConfig, Config
from fl_cem.registry import get_attack, list_attacks
from fl_cem.reporting.run_dir import RunDir
from fl_cem.training.centralized import train_centralized
from fl_cem.training.client import Client
from fl_cem.training.step import Forward

from .test_attack_inversion import INPUT, SMASHED, blobs, space_to_depth

CPU = torch.device("cpu")
BLACK_BOX = ["fora", "unsplit"]


def conv_design() -> PublicDesign:
    """The victim's public architecture: one 2x2 stride-2 conv, no noise."""
    return PublicDesign(lambda: nn.Conv2d(1, 4, 2, stride=2), sigma=0.0)


def black_box_metrics(name: str, seed: int = 0, **overrides: Any) -> tuple[dict[str, float], int]:
    """Metrics and scored-target count of ``name`` with 192 aux blobs, 64 target blobs on the wire."""
    images = blobs(256)
    attack = make_attack(AttackConfig(name=name, **overrides), conv_design(), INPUT, SMASHED, CPU, seed=seed)
    result = run_attack(attack, images[:192], images[192:], wire=space_to_depth())
    return result.metrics, result.scored


@pytest.mark.parametrize("seed", [0, 1])
def test_fora_inverts_an_information_keeping_encoder_from_its_features_alone(seed: int) -> None:
    # Execute: 60 substitute epochs at 1e-2 (~3 s); measured MSE 0.002-0.003 against 0.041
    metrics, _ = black_box_metrics("fora", seed, fora_epochs=60, fora_lr=0.01, epochs=10, batch_size=32)

    # Assert: a quarter of the mean image's MSE, which a decoder on a wrong substitute does not reach
    assert metrics["mse"] < 0.25 * metrics["mse_mean_guess"]


@pytest.mark.parametrize("seed", [0, 1])
def test_unsplit_beats_the_mean_image_on_an_information_keeping_encoder(seed: int) -> None:
    # Execute: the default (the paper's) Adam 1e-3, 20 rounds of 50 + 50 steps (~1.5 s); measured 0.15-0.31 of the mean image
    metrics, scored = black_box_metrics("unsplit", seed, unsplit_rounds=20, unsplit_input_steps=50, unsplit_model_steps=50)

    # Assert
    assert scored == 64
    assert metrics["mse"] < 0.5 * metrics["mse_mean_guess"]


def test_unsplit_scores_only_the_targets_it_is_capped_to() -> None:
    # Execute
    _, scored = black_box_metrics("unsplit", unsplit_targets=10, unsplit_rounds=1, unsplit_input_steps=1, unsplit_model_steps=1)

    # Assert
    assert scored == 10


def test_unsplit_refuses_to_invert_observations_it_was_not_fitted_on() -> None:
    # Prepare
    attack = make_attack(AttackConfig(name="unsplit", unsplit_rounds=1, unsplit_input_steps=1, unsplit_model_steps=1), conv_design(), INPUT, SMASHED, CPU)
    z = space_to_depth()(blobs(8))
    attack.fit(blobs(16), z)

    # Execute / Assert
    assert attack.invert(z).shape == (8, *INPUT)
    with pytest.raises(ValueError, match="only the observations it was fitted on"):
        attack.invert(z + 1)


@pytest.mark.parametrize("name", BLACK_BOX)
def test_black_box_attacks_are_registered_as_black_box(name: str) -> None:
    # Execute
    cls = get_attack(name)

    # Assert
    assert name in list_attacks() and issubclass(cls, BlackBoxAttack) and cls.threat is Threat.BLACK_BOX
    assert Config.from_flat({"attack.name": name}).attack.name == name


@pytest.mark.parametrize("name", BLACK_BOX)
def test_a_black_box_attack_cannot_be_given_the_smashing_function(name: str) -> None:
    # Execute / Assert: the harness refuses; the constructor has nowhere to keep it
    with pytest.raises(TypeError, match="black-box"):
        make_attack(AttackConfig(name=name), space_to_depth(), INPUT, SMASHED, CPU)
    attack = make_attack(AttackConfig(name=name), conv_design(), INPUT, SMASHED, CPU)
    assert not hasattr(attack, "smash")


def test_a_white_box_attack_needs_the_smashing_function() -> None:
    # Execute / Assert
    with pytest.raises(TypeError, match="white-box"):
        make_attack(AttackConfig(name="decoder"), conv_design(), INPUT, SMASHED, CPU)


def test_a_black_box_attack_needs_the_targets_smashed_data() -> None:
    # Prepare
    attack = make_attack(AttackConfig(name="fora"), conv_design(), INPUT, SMASHED, CPU)

    # Execute / Assert: without target_z or the client's wire there is nothing to attack
    with pytest.raises(ValueError, match="needs the targets' smashed data"):
        run_attack(attack, blobs(16), blobs(4))


@pytest.mark.parametrize("name", BLACK_BOX)
def test_black_box_attacks_on_a_run_never_call_the_victims_encoder(
    name: str, tiny: Callable[..., Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: a finished run; the victim's forward pass fails while the attack fits or inverts
    cfg = tiny(**{"train.epochs": 1})
    train_centralized(cfg, log=lambda _: None)
    inside: list[str] = []
    cls = get_attack(name)
    fit, invert, forward = cls.fit, cls.invert, Client.forward

    def guarded(method: Callable[..., Any], what: str) -> Callable[..., Any]:
        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            inside.append(what)
            try:
                return method(self, *args, **kwargs)
            finally:
                inside.pop()

        return call

    def victim_forward(self: Client, x: Tensor, seed: int) -> Forward:
        if inside:
            raise AssertionError(f"the victim's encoder ran inside a black-box attack's {inside[-1]}")
        return forward(self, x, seed)

    monkeypatch.setattr(cls, "fit", guarded(fit, "fit"))
    monkeypatch.setattr(cls, "invert", guarded(invert, "invert"))
    monkeypatch.setattr(Client, "forward", victim_forward)
    fast = {"attack.fora-epochs": 1, "attack.epochs": 1, "attack.unsplit-rounds": 1, "attack.unsplit-input-steps": 1, "attack.unsplit-model-steps": 1}

    # Execute
    outcome = attack_run(str(RunDir.for_config(cfg).root), name, "train", overrides=fast, log=lambda _: None)[0]

    # Assert: it ran to the end, recorded as black-box, on the targets the white-box attacks use
    assert outcome["status"] == "finished" and outcome["threat"] == "black-box"
    assert outcome["targets"] == min(outcome["targets_offered"], 64 if name == "unsplit" else outcome["targets_offered"])


def test_mk_mmd_is_zero_for_equal_batches_and_matches_a_hand_computed_pair() -> None:
    # Prepare: one point at 0 and one at 1; mean squared distance of the 4 pairs = 0.5
    source, target = torch.zeros(1, 1), torch.ones(1, 1)
    # each kernel exp(-1 / (2 * s * 0.5)) = exp(-1 / s) across the pair, 1 on itself
    expected = 3 + 3 - 2 * sum(math.exp(-1 / s) for s in KERNEL_SCALES)

    # Execute / Assert
    assert mk_mmd(source, target).item() == pytest.approx(expected)
    batch = torch.randn(8, 5)
    assert mk_mmd(batch, batch.clone()).item() == pytest.approx(0.0, abs=1e-6)


def _record_the_wire(monkeypatch: pytest.MonkeyPatch) -> tuple[list[Tensor], dict[str, Any]]:
    """Log every image the victim smashes, and what FORA's fit receives (fit and inversion stubbed out)."""
    sent: list[Tensor] = []
    fitted: dict[str, Any] = {}
    smash = Victim.smash

    def logged_smash(self: Victim, seed: int) -> Callable[[Tensor], Tensor]:
        wire = smash(self, seed)

        def send(x: Tensor) -> Tensor:
            sent.append(x.detach().cpu().clone())
            return wire(x)

        return send

    def fit(self: Any, aux_images: Tensor, observed: Tensor, on_epoch: Any = None, intercepted: Tensor | None = None) -> dict[str, float]:
        fitted.update(aux=aux_images.cpu(), observed=len(observed), intercepted=0 if intercepted is None else len(intercepted))
        return {}

    monkeypatch.setattr(Victim, "smash", logged_smash)
    monkeypatch.setattr(get_attack("fora"), "fit", fit)
    monkeypatch.setattr(get_attack("fora"), "invert", lambda self, z: torch.zeros(len(z), *self.input_shape))
    return sent, fitted


def _rows(images: Tensor) -> set[bytes]:
    """Each image as bytes, to compare image sets exactly."""
    return {row.numpy().tobytes() for row in images.flatten(1)}


def test_train_mode_fits_fora_on_every_image_the_client_sent_but_never_on_an_aux_image(
    tiny: Callable[..., Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: 270 training images; 27 held-out targets; aux capped at 100, so 143 more were sent unseen
    cfg = tiny(**{"train.epochs": 1})
    train_centralized(cfg, log=lambda _: None)
    sent, fitted = _record_the_wire(monkeypatch)

    # Execute
    outcome = attack_run(str(RunDir.for_config(cfg).root), "fora", "train", overrides={"attack.aux-limit": 100}, log=lambda _: None)[0]

    # Assert: targets + the rest of the training split outside aux, all of it, and no aux image
    on_the_wire = torch.cat(sent)
    assert outcome["aux"] == 100 and outcome["targets"] == 27
    assert fitted["observed"] == 27 and fitted["intercepted"] == 270 - 100 - 27
    assert outcome["intercepted"] == len(on_the_wire) == 270 - 100
    assert len(_rows(on_the_wire)) == 170 and not _rows(on_the_wire) & _rows(fitted["aux"])


def test_infer_mode_fits_fora_on_the_deployed_queries_only(tiny: Callable[..., Config], monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: 100 test images, half of them the attacker's, the other half the client's queries
    cfg = tiny(**{"train.epochs": 1})
    train_centralized(cfg, log=lambda _: None)
    sent, fitted = _record_the_wire(monkeypatch)

    # Execute
    outcome = attack_run(str(RunDir.for_config(cfg).root), "fora", "infer", log=lambda _: None)[0]

    # Assert
    assert fitted["observed"] == outcome["targets"] == 50 and fitted["intercepted"] == 0
    assert outcome["intercepted"] == len(torch.cat(sent)) == 50
    assert not _rows(torch.cat(sent)) & _rows(fitted["aux"])


def test_run_attack_passes_intercepted_rows_only_to_attacks_that_fit_them() -> None:
    # Prepare: FORA fits intercepted rows, UnSplit does not; a wire that counts what it smashes
    images = blobs(96)
    smashed: list[int] = []

    def wire(x: Tensor) -> Tensor:
        smashed.append(len(x))
        return space_to_depth()(x)

    fast = {"fora_epochs": 1, "epochs": 1, "unsplit_rounds": 1, "unsplit_input_steps": 1, "unsplit_model_steps": 1}
    fora = make_attack(AttackConfig(name="fora", **fast), conv_design(), INPUT, SMASHED, CPU)
    unsplit = make_attack(AttackConfig(name="unsplit", **fast), conv_design(), INPUT, SMASHED, CPU)

    # Execute
    with_rows = run_attack(fora, images[:32], images[32:48], wire=wire, intercepted_images=images[48:])
    smashed_for_fora = sum(smashed)
    without = run_attack(unsplit, images[:32], images[32:48], wire=wire, intercepted_images=images[48:])

    # Assert: 16 targets + 48 further rows for FORA; UnSplit's 16 targets only, the rest never smashed
    assert with_rows.intercepted == smashed_for_fora == 64
    assert without.intercepted == sum(smashed) - smashed_for_fora == 16
    with pytest.raises(ValueError, match="white-box"):
        run_attack(make_attack(AttackConfig(name="decoder", epochs=1), space_to_depth(), INPUT, SMASHED, CPU), images[:32], images[32:48], intercepted_images=images[48:])
