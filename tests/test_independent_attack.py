"""The independent attacker of ``benchmarks/independent_attack.py`` inverts a tiny undefended victim."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

import pytest
import torch

from fl_cem.config import Config
from fl_cem.reporting.run_dir import RunDir
from fl_cem.training.centralized import train_centralized

from .conftest import load_benchmark


def test_independent_attack_beats_the_mean_image_on_an_undefended_run(tiny: Callable[..., Config], tmp_path: Path) -> None:
    # Prepare: no defense, no bottleneck, the default small noise; more digits than the fixture's
    # 300 so that a few epochs of fitting have something to learn from
    torch.set_num_threads(1)
    bench = load_benchmark("independent_attack")
    cfg = tiny(**{"train.epochs": 1, "data.train-subset": 900})
    train_centralized(cfg, log=lambda _: None)
    root = RunDir.for_config(cfg).root
    # a small network and batch for seconds on one thread; the benchmark's own schedule otherwise
    settings = bench.Settings(epochs=3, batch_size=16, width=32, blocks=2)
    lines: list[str] = []
    # Execute
    rows = bench.attack_run_dir(str(root), "train", 0, settings, log=lines.append)
    # Assert: one victim, finite, and well under the no-information baseline
    assert len(rows) == 1
    row = rows[0]
    assert math.isfinite(row["independent_mse"]) and row["independent_mse"] > 0
    assert row["independent_mse"] < 0.9 * row["mean_image_mse"], row
    assert math.isnan(row["ours_mse"])  # the run was never attacked by ours: nothing to compare, not a zero
    assert sum("epoch" in line for line in lines) == 3 and 1 <= row["best_epoch"] <= 3
    # the results file merges rows by run and mode
    out = tmp_path / "independent.json"
    bench.save(rows, out)
    bench.save([{**row, "mode": "infer"}], out)
    bench.save([{**row, "independent_mse": 1.0}], out)
    saved = json.loads(out.read_text())["rows"]
    assert sorted(r["mode"] for r in saved) == ["infer", "train"]
    assert next(r for r in saved if r["mode"] == "train")["independent_mse"] == 1.0


def test_mean_image_baseline_is_the_per_image_mse_of_the_aux_mean() -> None:
    # Prepare: two aux images whose mean is 0.5 everywhere, a target of ones
    bench = load_benchmark("independent_attack")
    aux = torch.stack([torch.zeros(1, 2, 2), torch.ones(1, 2, 2)])
    targets = torch.ones(3, 1, 2, 2)
    # Execute / Assert
    assert bench.per_image_mse(aux.mean(0, keepdim=True).expand_as(targets), targets) == pytest.approx(0.25)
