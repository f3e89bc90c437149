"""Adding a defense touches only its own file: a defense registered here, in a test, trains
centrally, through the in-process protocol that drives the apps' SplitClient/SplitServer, and
through the real Flower ServerApp/ClientApp, and is what the attacker smashes through, without
any other file of the project knowing it."""

from __future__ import annotations

from typing import Callable, Iterator

import pytest
import torch
from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable
from torch import Tensor

from fl_cem.attacks.run import attack_run
from fl_cem.config import Config
from fl_cem.defenses.base import Defense, Shapes
from fl_cem.federated.reference import run_reference
from fl_cem.federated.wire import from_bytes
from fl_cem.registry import DEFENSES, register_defense
from fl_cem.reporting.run_dir import RunDir
from fl_cem.training.centralized import train_centralized

from .conftest import simulate

CALLS = {"transform": 0, "client_loss": 0}
NAME = "toy_shrink"


class Shrink(Defense):
    """Halves the features and penalises their energy: hooks a real defense would use.

    It also counts its calls in a buffer, which travels in the client's state: the count of a
    run whose clients live in other processes (Flower's Ray actors) reaches the checkpoint.
    """

    def __init__(self, cfg: Config, shapes: Shapes) -> None:
        super().__init__(cfg, shapes)
        self.register_buffer("calls", torch.zeros(2, dtype=torch.long))

    def transform(self, z_raw: Tensor) -> Tensor:
        CALLS["transform"] += 1
        self.calls[0] += 1
        return 0.5 * z_raw

    def client_loss(self, x: Tensor, z_hat: Tensor, z: Tensor, y: Tensor) -> Tensor:
        CALLS["client_loss"] += 1
        self.calls[1] += 1
        return 1e-3 * z_hat.pow(2).mean()


def register_shrink() -> str:
    """Register ``toy_shrink`` as a user's module would, once per process."""
    if NAME not in DEFENSES.names():
        register_defense(NAME)(Shrink)
    return NAME


def with_shrink(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """A Flower Mod: the ClientApp's process loads the defense (this module) before it reads the config."""
    register_shrink()
    return call_next(message, context)


@pytest.fixture
def shrink_defense() -> Iterator[str]:
    """``toy_shrink`` registered in this process, and taken out again afterwards."""
    yield register_shrink()
    del DEFENSES._entries[NAME]


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


@pytest.mark.slow  # a Ray simulation
def test_a_defense_registered_elsewhere_trains_through_the_flower_apps(tiny: Callable[..., Config], shrink_defense: str) -> None:
    # Prepare: the ServerApp runs in this process, each ClientApp in a Ray actor, which loads
    # the defense's module through a Mod, as a user's own module would be loaded there
    cfg = tiny(**{"run.name": "toy_flower", "defense.name": shrink_defense, "noise.sigma": 0.05, "partition.num-partitions": 2})
    # Execute
    simulate(cfg, num_clients=2, mods=[with_shrink])
    # Assert: the run finished and learned, and each client's saved defense counts its hooks' calls
    run = RunDir.for_config(cfg)
    results = run.read_results()
    assert results["status"] == "finished" and results["config"]["defense.name"] == shrink_defense
    assert results["rounds"][-1]["train_loss"] < results["rounds"][0]["train_loss"]
    client_states = torch.load(run.checkpoint_path, weights_only=True)["client_states"]
    assert sorted(client_states) == [0, 1]
    for blob in client_states.values():
        transform_calls, loss_calls = from_bytes(bytes(blob.numpy()))["client"]["defense"]["calls"].tolist()
        assert transform_calls > 0 and loss_calls > 0
