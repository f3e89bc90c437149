"""CEM inside real training: it raises the measured bound at a bounded cost in accuracy."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from fl_cem.config import Config
from fl_cem.training.centralized import train_centralized

SHARED_CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"
ACCURACY_MARGIN = 0.15
"""Largest test-accuracy drop accepted from CEM on this short run (4 epochs, 1,294 digits)."""


@pytest.mark.parametrize(("variant", "lam"), [("paper", 0.01), ("official", 16.0)])
def test_cem_raises_the_bound_at_a_small_accuracy_cost(tiny: Callable[..., Config], variant: str, lam: float) -> None:
    # Prepare: same seed and data; the only difference is lambda
    common = {"train.epochs": 4, "data.train-subset": 0, "cem.variant": variant}
    off = tiny(**common, **{"run.name": f"off_{variant}", "cem.lambda": 0.0})
    on = tiny(**common, **{"run.name": f"on_{variant}", "cem.lambda": lam})
    # Execute
    without = train_centralized(off, log=lambda _: None)["final"]
    with_cem = train_centralized(on, log=lambda _: None)["final"]
    # Assert: a higher H(x|z) bound (less negative -L_C), accuracy within the margin
    assert with_cem["cem"]["hxz_relative"] > without["cem"]["hxz_relative"]
    assert with_cem["cem"]["mse_lower_bound"] > without["cem"]["mse_lower_bound"]
    assert with_cem["test_accuracy"] >= without["test_accuracy"] - ACCURACY_MARGIN


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_CIFAR.is_file(), reason="the shared CIFAR-10 tarball is not on this machine")
def test_trains_on_a_real_cifar10_subset(tmp_path: Path) -> None:
    # Prepare: VGG11 c2 with bottleneck on 3,000 CIFAR-10 training images from the JPEG tarball
    cfg = Config.from_flat(
        {
            "run.output-dir": str(tmp_path),
            "data.source": "imagefolder",
            "data.root": str(SHARED_CIFAR),
            "data.train-subset": 3000,
            "data.test-subset": 500,
            "data.augment": False,
            "train.epochs": 3,
            "train.batch-size": 32,
            "train.lr": 0.01,
            "cem.lambda": 16.0,
            "cem.variant": "official",
        }
    )
    # Execute
    results = train_centralized(cfg, log=lambda _: None)
    # Assert: CIFAR shapes, the loss falls, better than chance
    assert results["smashed_shape"] == [8, 8, 8]
    epochs = results["epochs"]
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    assert results["final"]["test_accuracy"] > 0.15


def test_cem_changes_the_encoder_step_only(tiny: Callable[..., Config]) -> None:
    # Prepare: two identical split models, CEM on in one; one training step on the same batch
    import torch

    from fl_cem.training.schedule import Position
    from fl_cem.training.setup import build_client, build_model, build_server
    from fl_cem.training.step import train_step

    x, y = torch.rand(64, 1, 8, 8), torch.arange(64) % 10
    parts = []
    for lam in (0.0, 0.01):
        cfg = tiny(**{"cem.lambda": lam})
        model = build_model(cfg, (1, 8, 8), 10, (0.5,), (0.25,))
        client = build_client(cfg, model, 10, 64, torch.device("cpu"))
        server = build_server(cfg, model, torch.device("cpu"))
        client.cem.refit(client.features([(x, y)])[0], y, torch.Generator().manual_seed(0))
        # Execute
        metrics = train_step(client, server, x, y, 1, Position(0))
        parts.append((client, server, metrics))
    (off, off_server, off_metrics), (on, on_server, on_metrics) = parts
    # Assert: the decoder's step is the same; the encoder's differs by the CEM gradient
    assert "cem_loss" in on_metrics and "cem_loss" not in off_metrics
    for a, b in zip(off_server.decoder.parameters(), on_server.decoder.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert any(not torch.equal(a, b) for a, b in zip(off.encoder.parameters(), on.encoder.parameters()))


@pytest.mark.parametrize(("variant", "lam", "first_epoch_has_cem"), [("official", 16.0, False), ("paper", 0.01, True)])
def test_only_the_paper_variant_applies_cem_in_the_first_epoch(tiny: Callable[..., Config], variant: str, lam: float, first_epoch_has_cem: bool) -> None:
    # Prepare: one epoch without and with CEM, same seed and data
    import torch

    from fl_cem.reporting.run_dir import RunDir

    common = {"train.epochs": 1, "cem.variant": variant}
    off = tiny(**common, **{"run.name": f"off_{variant}", "cem.lambda": 0.0})
    on = tiny(**common, **{"run.name": f"on_{variant}", "cem.lambda": lam})
    # Execute
    train_centralized(off, log=lambda _: None)
    with_cem = train_centralized(on, log=lambda _: None)
    # Assert: the official variant's first epoch is plain training (its mixture is fitted after it)
    a = torch.load(RunDir.for_config(off).checkpoint_path, weights_only=True)["client"]["encoder"]
    b = torch.load(RunDir.for_config(on).checkpoint_path, weights_only=True)["client"]["encoder"]
    same = all(torch.equal(a[key], b[key]) for key in a)
    assert same is not first_epoch_has_cem
    assert ("cem_loss" in with_cem["epochs"][0]) is first_epoch_has_cem
    assert "hxz_relative" in with_cem["final"]["cem"]


@pytest.mark.parametrize(("variant", "sees_the_mask"), [("official", False), ("paper", True)])
def test_official_cem_loss_ignores_the_dropout_mask(tiny: Callable[..., Config], variant: str, sees_the_mask: bool) -> None:
    # Prepare: a dropout client with a fitted mixture; two seeds draw two different masks
    import torch

    from fl_cem.training.schedule import Position
    from fl_cem.training.setup import build_client, build_model

    cfg = tiny(**{"cem.lambda": 1.0, "cem.variant": variant, "defense.name": "dropout", "defense.dropout": 0.5, "noise.sigma": 0.1})
    x, y = torch.rand(64, 1, 8, 8), torch.arange(64) % 10
    losses = []
    for seed in (1, 2):
        model = build_model(cfg, (1, 8, 8), 10, (0.5,), (0.25,))  # the same weights both times
        client = build_client(cfg, model, 10, 64, torch.device("cpu"))
        client.refit([(x, y)], seed=0)
        fwd = client.forward(x, seed)
        assert not torch.equal(fwd.z_hat, client.forward(x, seed + 10).z_hat)  # the masks differ
        # Execute
        metrics = client.step(x, y, seed, torch.zeros_like(fwd.z), Position(0), fwd)
        losses.append(metrics["cem_loss"])
    # Assert: the official loss is computed on the encoder output, before the mask
    assert (not torch.equal(losses[0], losses[1])) is sees_the_mask
