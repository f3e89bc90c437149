"""Adding a defense touches only its own file: a defense registered here, in a test, trains
centrally, federated (the in-process protocol that drives the apps' SplitClient/SplitServer)
and is what the attacker smashes through, without any other file of the project knowing it."""

from __future__ import annotations

from typing import Callable, Iterator

import pytest
from torch import Tensor

from fl_cem.attacks.run import attack_run
from fl_cem.config import Config
from fl_cem.defenses.base import Defense
from fl_cem.federated.reference import run_reference
from fl_cem.registry import DEFENSES, register_defense
from fl_cem.reporting.run_dir import RunDir
from fl_cem.training.centralized import train_centralized

CALLS = {"transform": 0, "client_loss": 0}


@pytest.fixture
def shrink_defense() -> Iterator[str]:
    """Register ``toy_shrink`` as a user's module would, and take it out again afterwards."""

    @register_defense("toy_shrink")
    class Shrink(Defense):
        """Halves the features and penalises their energy: hooks a real defense would use."""

        def transform(self, z_raw: Tensor) -> Tensor:
            CALLS["transform"] += 1
            return 0.5 * z_raw

        def client_loss(self, x: Tensor, z_hat: Tensor, z: Tensor, y: Tensor) -> Tensor:
            CALLS["client_loss"] += 1
            return 1e-3 * z_hat.pow(2).mean()

    yield "toy_shrink"
    del DEFENSES._entries["toy_shrink"]


def test_a_defense_registered_elsewhere_trains_centrally_and_federated_and_is_attacked(tiny: Callable[..., Config], shrink_defense: str) -> None:
    # Prepare
    cfg = tiny(**{"defense.name": shrink_defense, "noise.sigma": 0.05})
    # Execute / Assert: centralized training calls both hooks and finishes
    results = train_centralized(cfg, log=lambda _: None)
    assert results["status"] == "finished" and results["config"]["defense.name"] == shrink_defense
    assert CALLS["transform"] > 0 and CALLS["client_loss"] > 0
    # the attacker's victim smashes through the same hooks
    before = CALLS["transform"]
    attack_run(str(RunDir.for_config(cfg).root), "decoder", "infer", overrides={"attack.epochs": 1}, log=lambda _: None)
    assert CALLS["transform"] > before
    # the federated protocol with two clients trains it too
    before = dict(CALLS)
    federated = run_reference(cfg.replace(**{"run.name": "toy_federated", "federated.rounds": 4}), 2, log=lambda _: None)
    assert CALLS["transform"] > before["transform"] and CALLS["client_loss"] > before["client_loss"]
    assert federated["final"]["test_accuracy_mean"] > 0.2  # learns: chance is 0.1
