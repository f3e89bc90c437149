"""Centralized training: it learns, it resumes exactly, and it writes what it promises."""

from __future__ import annotations

import json
from typing import Any, Callable

import pytest
import torch

from fl_cem.config import Config
from fl_cem.reporting.run_dir import RunDir
from fl_cem.training.centralized import train_centralized


def weights(run: RunDir) -> dict[str, torch.Tensor]:
    state = torch.load(run.checkpoint_path, weights_only=True)
    return {**{f"e.{k}": v for k, v in state["client"]["encoder"].items()}, **{f"d.{k}": v for k, v in state["server"]["decoder"].items()}}


def test_tiny_run_learns_and_writes_its_outputs(tiny: Callable[..., Config]) -> None:
    # Prepare
    cfg = tiny(**{"model.arch": "vgg11", "model.cut": 2, "train.epochs": 4, "data.train-subset": 0})
    # Execute
    results = train_centralized(cfg, log=lambda _: None)
    # Assert: loss falls, accuracy beats chance (10 classes) by a wide margin
    epochs = results["epochs"]
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    assert results["final"]["test_accuracy"] > 0.5
    run = RunDir.for_config(cfg)
    on_disk = json.loads(run.results_path.read_text())
    assert on_disk["final"] == results["final"]
    assert set(on_disk["epochs"][0]) >= {"train_loss", "val", "test", "cem", "train_time_s"}
    assert any(run.tb_dir.iterdir())
    assert Config.load(run.config_path) == cfg


def test_interrupted_run_resumes_to_the_same_weights(tiny: Callable[..., Config]) -> None:
    # Prepare
    straight = tiny(**{"run.name": "straight", "train.epochs": 3, "cem.lambda": 0.01})
    broken = tiny(**{"run.name": "broken", "train.epochs": 3, "cem.lambda": 0.01})

    def interrupt(epoch: int, record: dict[str, Any]) -> None:
        if epoch == 0:
            raise KeyboardInterrupt

    # Execute
    train_centralized(straight, log=lambda _: None)
    with pytest.raises(KeyboardInterrupt):
        train_centralized(broken, on_epoch_end=interrupt, log=lambda _: None)
    resumed = train_centralized(broken, log=lambda _: None)
    # Assert
    a, b = weights(RunDir.for_config(straight)), weights(RunDir.for_config(broken))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    assert len(resumed["epochs"]) == 3


def test_resume_refuses_a_checkpoint_of_another_config(tiny: Callable[..., Config]) -> None:
    # Prepare
    train_centralized(tiny(**{"train.epochs": 1}), log=lambda _: None)
    # Execute / Assert
    with pytest.raises(ValueError, match="keys differ: train.lr"):
        train_centralized(tiny(**{"train.epochs": 1, "train.lr": 0.01}), log=lambda _: None)
