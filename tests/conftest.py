"""Shared fixtures: tiny configs on the embedded digits and an in-process Flower simulation."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from fl_cem.config import Config

# One thread per process: the Ray actors and the test process share two cores, and
# oversubscribed torch threads run many times slower than one.
torch.set_num_threads(1)

TINY = {
    "run.name": "tiny",
    "data.source": "digits",
    "model.arch": "resnet20",
    "model.cut": 1,
    "data.train-subset": 300,
    "data.test-subset": 100,
    "train.batch-size": 32,
    "train.eval-batch-size": 256,
    "train.lr": 0.02,
    "train.epochs": 2,
    "federated.rounds": 2,
    "federated.local-epochs": 1,
    "cem.clusters-per-class": 2,
}


@pytest.fixture
def tiny(tmp_path: Path) -> Callable[..., Config]:
    """``tiny(**{"cem.lambda": 1.0})``: a small, fast config writing under ``tmp_path``."""

    def make(**overrides: Any) -> Config:
        return Config.from_flat({**TINY, "run.output-dir": str(tmp_path / "runs"), **overrides})

    return make


def simulate(cfg: Config, num_clients: int, mods: list | None = None) -> None:
    """Run the ServerApp and ClientApp in-process with ``num_clients`` supernodes."""
    from flwr.simulation import run_simulation

    from fl_cem.client_app import make_client_app
    from fl_cem.server_app import make_server_app

    overrides = cfg.to_flat()
    run_simulation(
        server_app=make_server_app(overrides),
        client_app=make_client_app(overrides, mods=mods),
        num_supernodes=num_clients,
        backend_config={"client_resources": {"num_cpus": 1}, "init_args": {"num_cpus": 2, "include_dashboard": False}},
    )


def simulate_killed_in_round_two(cfg: Config, num_clients: int) -> None:
    """Run ``cfg`` with every client failing in round 2, after round 1 was checkpointed, so that
    the run stops (``federated.min-clients``) and a second :func:`simulate` resumes it."""
    from flwr.app import Context, Message
    from flwr.clientapp.typing import ClientAppCallable

    def all_fail_in_round_two(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
        if message.metadata.message_type == "train.step" and message.metadata.group_id == "2":
            raise RuntimeError("killed")
        return call_next(message, context)

    with pytest.raises(Exception, match="min-clients"):
        simulate(cfg, num_clients, mods=[all_fail_in_round_two])
