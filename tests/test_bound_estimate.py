"""Theorem 1's two H(x) estimates (isotropic, full covariance) and the flags on attacks that beat them."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from fl_cem.attacks.metrics import bound_fields
from fl_cem.cem.bound import TWO_PI_E, gaussian_entropy, gaussian_entropy_full, swap_entropy
from fl_cem.cli import main
from fl_cem.config import Config, DataConfig
from fl_cem.data import ImageSet, SourceData, load_source, load_splits
from fl_cem.data import splits as splits_module
from fl_cem.reporting.report import write_report
from fl_cem.reporting.run_dir import RunDir
from fl_cem.training.centralized import train_centralized

from .test_cem_bound import load_isotropic, make_cem


def symmetric_points(*points: tuple[float, ...]) -> torch.Tensor:
    """``p_k`` and ``-p_k``: mean 0 and maximum-likelihood covariance ``(1/K) sum_k p_k p_k^T``."""
    half = torch.tensor(points, dtype=torch.float64)
    return torch.cat([half, -half])


def test_full_covariance_entropy_is_the_closed_form_on_a_known_covariance() -> None:
    # Prepare: p1 = sqrt(3/2) (1, 1), p2 = (1, -1) / sqrt(2): C = [[1, 1/2], [1/2, 1]],
    # eigenvalues 3/2 and 1/2, |C| = 3/4, v = tr(C) / 2 = 1
    samples = symmetric_points((math.sqrt(1.5), math.sqrt(1.5)), (1 / math.sqrt(2), -1 / math.sqrt(2)))

    # Execute
    plain = gaussian_entropy_full(samples, shrinkage=0.0)
    shrunk = gaussian_entropy_full(samples, shrinkage=0.2)

    # Assert: H = d/2 log(2 pi e) + 1/2 log|S|; S = 0.8 C + 0.2 I has eigenvalues 1.4 and 0.6
    assert plain == pytest.approx(math.log(TWO_PI_E) + 0.5 * math.log(0.75), abs=1e-12)
    assert shrunk == pytest.approx(math.log(TWO_PI_E) + 0.5 * math.log(1.4 * 0.6), abs=1e-12)


def test_full_covariance_entropy_with_fewer_samples_than_pixels_uses_the_floor() -> None:
    # Prepare: +-(1, 1, 0) in d = 3: C = [[1, 1, 0], [1, 1, 0], [0, 0, 0]], eigenvalues 2, 0, 0, v = 2/3
    samples = symmetric_points((1.0, 1.0, 0.0))

    # Execute
    half = gaussian_entropy_full(samples, shrinkage=0.5)

    # Assert: S = C / 2 + I / 3 has eigenvalues 4/3, 1/3, 1/3, |S| = 4/27; without shrinkage, singular
    assert half == pytest.approx(1.5 * math.log(TWO_PI_E) + 0.5 * math.log(4 / 27), abs=1e-12)
    with pytest.raises(ValueError, match="singular"):
        gaussian_entropy_full(samples, shrinkage=0.0)
    with pytest.raises(ValueError, match="constant"):
        gaussian_entropy_full(torch.ones(5, 3))


def test_full_covariance_entropy_is_below_the_isotropic_one_on_correlated_pixels() -> None:
    # Prepare: a random walk along 64 "pixels" (neighbours correlated), and two unit-variance
    # pixels with correlation 0.8, whose gap is -1/2 log(1 - 0.64) = 0.5108 nats
    walk = torch.randn(2000, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64).cumsum(1)
    walk_var = float(walk.var(0, unbiased=False).mean())
    pair = symmetric_points((math.sqrt(1.8), math.sqrt(1.8)), (math.sqrt(0.2), -math.sqrt(0.2)))  # eigenvalues 1.8, 0.2

    # Execute
    gaps = [gaussian_entropy(64, walk_var) - gaussian_entropy_full(walk), gaussian_entropy(2, 1.0) - gaussian_entropy_full(pair, shrinkage=0.0)]

    # Assert: Hadamard / AM-GM make the gap >= 0; correlation makes it large
    assert gaps[0] > 50
    assert gaps[1] == pytest.approx(-0.5 * math.log(1 - 0.8**2), abs=1e-12)


def test_splits_pixel_entropy_is_the_estimate_of_the_training_split(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: 2x2 images whose last pixel is constant (a zero-variance pixel), the rest correlated
    base = torch.arange(200) % 200
    images = torch.stack([base, (base + 7) % 256, base // 2, torch.zeros_like(base)], 1).reshape(200, 1, 2, 2).to(torch.uint8)
    source = SourceData(ImageSet(images, torch.arange(200) % 2), test=None, classes=["a", "b"], natural=True)
    monkeypatch.setattr(splits_module, "load_source", lambda *args: source)
    load_splits.cache_clear()
    load_source.cache_clear()

    # Execute
    splits = load_splits(DataConfig(val_fraction=0.1), seed=0)
    entropy = splits.pixel_entropy
    load_splits.cache_clear()

    # Assert: fewer images than ENTROPY_IMAGES, so all of them; finite despite the constant pixel
    assert entropy == pytest.approx(gaussian_entropy_full(splits.train.images.flatten(1).double() / 255), abs=1e-9)
    assert math.isfinite(entropy) and entropy < gaussian_entropy(4, splits.pixel_var)


def test_cem_report_gives_the_full_covariance_bound_beside_the_isotropic_one() -> None:
    # Prepare: L_C = log 8 (see test_cem_bound); H_F below H_G of v = 0.1 in d = 4
    cem = make_cem()
    load_isotropic(cem, [0.5, 0.5], [0.75, 0.75], [30, 70])
    hf = gaussian_entropy(4, 0.1) - 2.0

    # Execute
    report = cem.report(data_dim=4, data_var=0.1, data_entropy=hf)

    # Assert: exp(2 (H_F - L_C) / 4) / (2 pi e) = 0.1 / sqrt(8) * exp(-1)
    assert report["hx_gaussian_full"] == hf and report["hxz_absolute_full"] == pytest.approx(hf - math.log(8))
    assert report["mse_lower_bound_full"] == pytest.approx(0.1 / math.sqrt(8) * math.exp(-1))
    assert report["mse_lower_bound_full"] < report["mse_lower_bound"] == pytest.approx(0.1 / math.sqrt(8))
    assert swap_entropy(report["mse_lower_bound"], 4, gaussian_entropy(4, 0.1), hf) == pytest.approx(report["mse_lower_bound_full"])


def test_bound_fields_flag_an_mse_below_an_estimate_and_only_then() -> None:
    # Execute
    fields = bound_fields(0.01, {"": 0.02, "_full": 0.01})
    none = bound_fields(0.01, {"": None})

    # Assert: 0.01 < 0.02 violates; 0.01 = 0.01 does not
    assert fields == {
        "mse_lower_bound": 0.02, "mse_bound_ratio": 0.5, "bound_violated": True,
        "mse_lower_bound_full": 0.01, "mse_bound_ratio_full": 1.0, "bound_violated_full": False,
    }
    assert none == {"mse_lower_bound": None, "mse_bound_ratio": None, "bound_violated": None}


def test_an_attack_below_the_estimate_is_flagged_in_results_and_on_the_cli(tiny: Callable[..., Config], capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare: a trained run whose recorded bound is set above any MSE (1.0), then far below (1e-6)
    cfg = tiny(**{"train.epochs": 1})
    train_centralized(cfg, log=lambda _: None)
    run = RunDir.for_config(cfg)
    fast = ["--set", "attack.epochs=1", "--set", "attack.batch-size=64"]
    outcomes = []
    for bound in (1.0, 1e-6):
        results = run.read_results()
        results["final"]["cem"]["mse_lower_bound"] = bound
        run.write_results(results)
        capsys.readouterr()

        # Execute
        assert main(["attack", "--run", str(run.root), "--attack", "decoder", "--mode", "infer", *fast]) == 0
        outcomes.append((run.read_results()["attacks"][-1], capsys.readouterr().out))

    # Assert: the full-covariance estimate is the recorded one moved from H_G to H_F
    splits = load_splits(cfg.data, cfg.run.seed)
    dim = math.prod(splits.shape)
    (high, high_out), (low, low_out) = outcomes
    mse = high["metrics"]["mse"]
    assert high["bound_violated"] is True and high["mse_bound_ratio"] == pytest.approx(mse)
    assert high["mse_lower_bound_full"] == pytest.approx(swap_entropy(1.0, dim, gaussian_entropy(dim, splits.pixel_var), splits.pixel_entropy))
    assert high["bound_violated_full"] is (mse < high["mse_lower_bound_full"])
    assert "BELOW the isotropic" in high_out and "H(x) estimate is too high" in high_out
    assert low["bound_violated"] is False and low["bound_violated_full"] is False and "BELOW" not in low_out
    assert low["mse_bound_ratio_full"] > low["mse_bound_ratio"] > 1


def write_attacked_run(folder: Path, lam: float, mse: float, bound: float, recorded: dict[str, Any]) -> None:
    folder.mkdir(parents=True)
    metrics = {"mse": mse, "psnr": 20.0, "ssim": 0.5, "mse_mean_guess": 0.06}
    attack = {"attack": "decoder", "mode": "train", "victim": "v", "metrics": metrics, "time_s": 1.0, "mse_lower_bound": bound, **recorded}
    config = {"defense.name": "bottleneck", "run.seed": 0, "cem.lambda": lam}
    final = {"test_accuracy": 0.9, "cem": {"mse_lower_bound": bound}}
    (folder / "results.json").write_text(json.dumps({"kind": "centralized", "config": config, "final": final, "attacks": [attack]}))


def test_report_flags_a_violation_and_shows_the_ratio(tmp_path: Path) -> None:
    # Prepare: without CEM the MSE (0.010) is above its bound estimate (0.005); with CEM it is
    # below (0.012 < 0.015), recorded by an older fl-cem without the flag: judged from the bound
    write_attacked_run(tmp_path / "off", 0.0, 0.010, 0.005, {"mse_bound_ratio": 2.0, "bound_violated": False})
    write_attacked_run(tmp_path / "on", 16.0, 0.012, 0.015, {"mse_bound_ratio": 0.8})

    # Execute
    report = write_report(tmp_path)

    # Assert
    off, on = (row["mean"] for row in report["rows"])
    assert "decoder_train_violated" not in off and off["decoder_train_ratio"] == 2.0
    assert on["decoder_train_violated"] == 1.0 and on["decoder_train_ratio"] == 0.8
    assert "decoder_train_ratio" in report["columns"]
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "| bottleneck+CEM | λ=16 | 1 | 90.00 | 0.0120 **below bound est.** |" in markdown
    assert "| bottleneck | — | 1 | 90.00 | 0.0100 |" in markdown
    assert "Dec. MSE/bound train" in markdown and "0.8 **below bound est.**" in markdown
    assert "## Below the Theorem-1 bound estimate" in markdown
    assert "- on: decoder train MSE 0.0120 is below the isotropic estimate (MSE/bound 0.8)" in markdown
    assert "MSE bound est." in markdown


def test_report_without_violations_has_no_flag(tmp_path: Path) -> None:
    # Prepare: MSE equal to the estimate is no violation
    write_attacked_run(tmp_path / "on", 16.0, 0.015, 0.015, {"mse_bound_ratio": 1.0, "bound_violated": False})

    # Execute
    report = write_report(tmp_path)

    # Assert
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "decoder_train_violated" not in report["rows"][0]["mean"]
    assert "**below bound est.**" not in markdown and "Below the Theorem-1" not in markdown
