"""``benchmarks/first_epoch_trace.py``: the per-step trace records what training computed, on both paths."""

from __future__ import annotations

from typing import Callable

import pytest

from fl_cem.config import Config
from fl_cem.federated.reference import run_reference
from fl_cem.training.centralized import train_centralized
from fl_cem.training.server import Server

from .conftest import load_benchmark


def test_the_centralized_trace_is_every_step_of_the_epochs_it_reports(tiny: Callable[..., Config]) -> None:
    # Prepare
    trace = load_benchmark("first_epoch_trace")
    cfg = tiny(**{"cem.lambda": 0.0, "train.batch-size": 16})  # more steps a pass than the trace's slices
    original = Server.step

    # Execute
    result, steps = trace.traced(lambda: train_centralized(cfg, log=lambda _: None))
    passes = trace.per_slice(steps)

    # Assert: the wrapper is gone, and each pass's steps average to the loss the run reported
    assert Server.step is original
    assert [p["pass"] for p in passes] == [1, 2]
    for record, row in zip(result["epochs"], passes):
        losses = [s[1] for s in steps if s[0] == row["pass"] - 1]
        assert len(losses) == row["steps"] > trace.SLICES - 1
        assert sum(losses) / len(losses) == pytest.approx(record["train_loss"], rel=1e-5)
        assert len(row["loss"]) == trace.SLICES and all(g > 0 for g in row["grad_norm"])


def test_the_federated_trace_has_one_step_per_client_batch(tiny: Callable[..., Config]) -> None:
    # Prepare: two clients, lockstep, one decoder step per client batch (SplitFed V2)
    trace = load_benchmark("first_epoch_trace")
    cfg = tiny(**{"cem.lambda": 0.0})

    # Execute
    result, steps = trace.traced(lambda: run_reference(cfg, 2, log=lambda _: None))

    # Assert: every round's decoder steps are recorded under its pass, and average to its loss
    for record in result["rounds"]:
        losses = [s[1] for s in steps if s[0] == record["round"] - 1]
        assert losses
        assert min(losses) <= record["train_loss"] <= max(losses)
