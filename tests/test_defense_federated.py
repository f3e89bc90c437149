"""Every defense runs with CEM in the federated path (in-process Flower simulation)."""

from __future__ import annotations

import json
import math
from typing import Callable

import pytest

from fl_cem.config import Config
from fl_cem.defenses.adversarial import AdversarialDefense
from fl_cem.defenses.base import Defense
from fl_cem.registry import get_defense, list_defenses
from fl_cem.reporting.run_dir import RunDir
from tests.conftest import simulate


def has_client_loss(cls: type[Defense]) -> bool:
    return cls.client_loss is not Defense.client_loss


@pytest.mark.slow
@pytest.mark.parametrize("name", list_defenses())
def test_defense_trains_with_cem_over_federated_rounds(name: str, tiny: Callable[..., Config]) -> None:
    # Prepare: 2 clients x 2 rounds, so the defense's state crosses a round boundary
    cfg = tiny(**{"defense.name": name, "cem.lambda": 16.0, "federated.rounds": 2, "partition.num-partitions": 2})

    # Execute
    simulate(cfg, num_clients=2)

    # Assert
    results = json.loads(RunDir.for_config(cfg).results_path.read_text())
    last = results["rounds"][-1]
    assert len(results["rounds"]) == 2 and last["clients_trained"] == 2
    assert math.isfinite(last["train_loss"]) and math.isfinite(last["client"]["cem_loss"])
    cls = get_defense(name)
    if has_client_loss(cls):
        assert math.isfinite(last["client"]["defense_loss"])
    if issubclass(cls, AdversarialDefense):
        assert math.isfinite(last["client"]["adversary_loss"])
