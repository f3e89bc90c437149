"""Gaussian noise on the CEM uploads (``cem.stats-clip``, ``cem.stats-noise``): sensitivity, noise, merge, guarantee."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import pytest
import torch

from fl_cem.cem import ConditionalEntropy, MixtureStats
from fl_cem.cem.stats import clip_rows
from fl_cem.config import Config
from fl_cem.federated.client_logic import SplitClient
from fl_cem.federated.stats_noise import add_noise, gaussian_delta, gaussian_epsilon, noise_seed, privacy_report
from fl_cem.federated.wire import to_record
from strategies.split_strategy import SplitLearningStrategy

from .test_cem_channel import CHANNEL, channel_run

MODES = ("full", "diag", "isotropic")
PEERS = [0, 1, 2]


def clients(cfg: Config) -> list[SplitClient]:
    return [SplitClient(cfg, pid, 3, torch.device("cpu"), None) for pid in PEERS]


def strategy_for(cfg: Config) -> SplitLearningStrategy:
    cem = cfg.cem
    return SplitLearningStrategy(1.0, True, lambda z, y, c: {}, cem.clusters_per_class, 10, 0, cem.secure_aggregation, cem.bounded_uploads, cem.stats_noise > 0)


def replies(uploads: list[dict[str, torch.Tensor]], name: str) -> list[SimpleNamespace]:
    return [SimpleNamespace(content={name: to_record(u)}) for u in uploads]


# ---------------------------------------------------------------------------- zero noise


def test_zero_noise_uploads_and_merge_are_bit_identical_to_the_clear_protocol(tiny: Callable[..., Config]) -> None:
    # Prepare: the defaults (no clip, no noise), and the computation the protocol made before them
    cfg = tiny(**{**CHANNEL, "data.train-subset": 300})
    assert (cfg.cem.stats_clip, cfg.cem.stats_noise) == (0.0, 0.0)
    parties = clients(cfg)
    centres, counts = parties[0].local_centres(None, seed=0)

    # Execute
    step1 = parties[0].centres_upload(None, 0, None, PEERS, "1|0")
    uploads = [c.stats_upload(centres, PEERS, "1|0") for c in parties]
    merged = strategy_for(cfg).merge_cem_stats(replies(uploads, "stats"), centres)  # type: ignore[arg-type]
    before = []
    for c in parties:
        z, y = c.features()
        before.append(MixtureStats.compute(z.flatten(1), y, centres, 2, "diag"))

    # Assert: the same tensors, bit for bit
    assert torch.equal(step1["centres"], centres) and torch.equal(step1["counts"], counts)
    for upload, old in zip(uploads, before):
        assert upload.keys() == old.state_dict().keys()
        assert all(torch.equal(upload[k], v) for k, v in old.state_dict().items())
    reference = MixtureStats.merge(before)
    assert all(torch.equal(getattr(merged, k), getattr(reference, k)) for k in ("centres", "counts", "sums", "moments"))


# ---------------------------------------------------------------------------- sensitivity


def test_clip_rows_scales_long_rows_to_the_bound_and_keeps_short_ones() -> None:
    # Prepare: norms 5 and 0.5
    rows = torch.tensor([[3.0, 4.0], [0.3, 0.4]])
    # Execute
    clipped = clip_rows(rows, 1.0)
    # Assert: hand-computed
    torch.testing.assert_close(clipped, torch.tensor([[0.6, 0.8], [0.3, 0.4]]))
    assert torch.equal(clip_rows(rows, 0.0), rows)


@pytest.mark.parametrize("mode", MODES)
def test_clipping_bounds_what_one_sample_changes(mode: str) -> None:
    # Prepare: features far from their centres (norms ~ 30), one sample to add, C = 0.7
    g = torch.Generator().manual_seed(0)
    z = 10 * torch.randn(40, 9, generator=g, dtype=torch.float64)
    labels = torch.arange(40) % 2
    centres = torch.randn(4, 9, generator=g, dtype=torch.float64)
    clip = 0.7

    # Execute: the statistics with and without the last sample
    full = MixtureStats.compute(z, labels, centres, 2, mode, clip=clip)
    less = MixtureStats.compute(z[:-1], labels[:-1], centres, 2, mode, clip=clip)
    unclipped = MixtureStats.compute(z, labels, centres, 2, mode)

    # Assert: a count by 1, a sum by at most C, the moments by at most C^2 (L2 / Frobenius)
    assert float((full.counts - less.counts).double().norm()) == 1.0
    assert float((full.sums - less.sums).norm()) <= clip + 1e-12
    assert float((full.moments - less.moments).norm()) <= clip**2 + 1e-12
    # without the clip the same sample moves the sum by its residual's norm, far more
    assert float((unclipped.sums - MixtureStats.compute(z[:-1], labels[:-1], centres, 2, mode).sums).norm()) > 10 * clip


# ---------------------------------------------------------------------------- noise


def test_noise_has_the_stated_std_per_statistic_and_is_reproducible() -> None:
    # Prepare: zero statistics, so the upload is the noise; z = 1.5, C = 2
    z, clip = 1.5, 2.0
    tensors = {"counts": torch.zeros(20000, dtype=torch.int64), "sums": torch.zeros(200, 100), "moments": torch.zeros(200, 100)}

    # Execute
    noisy = add_noise(tensors, clip, z, seed=noise_seed(0, "1|0|stats", 2))
    again = add_noise(tensors, clip, z, seed=noise_seed(0, "1|0|stats", 2))
    other = add_noise(tensors, clip, z, seed=noise_seed(0, "1|0|stats", 1))

    # Assert: std z * sensitivity within 3 % (20,000 draws: the sample std's own spread is 0.5 %);
    # counts are rounded, which adds the variance 1/12 of a uniform rounding error
    assert noisy["sums"].std().item() == pytest.approx(z * clip, rel=0.03)
    assert noisy["moments"].std().item() == pytest.approx(z * clip**2, rel=0.03)
    assert noisy["counts"].dtype == torch.int64
    assert noisy["counts"].double().std().item() == pytest.approx(math.sqrt(z**2 + 1 / 12), rel=0.03)
    assert abs(noisy["sums"].mean().item()) < 0.05 * z * clip
    assert all(torch.equal(noisy[k], again[k]) for k in tensors)
    assert not torch.equal(noisy["sums"], other["sums"])


def test_full_moment_noise_is_symmetric_with_the_stated_std() -> None:
    # Execute
    noisy = add_noise({"moments": torch.zeros(50, 40, 40, dtype=torch.float64)}, 1.0, 2.0, seed=3)["moments"]
    # Assert: symmetric; every entry (on and off the diagonal) has std z C^2 = 2
    assert torch.equal(noisy, noisy.transpose(1, 2))
    upper = noisy[:, *torch.triu_indices(40, 40, offset=1)]
    assert upper.std().item() == pytest.approx(2.0, rel=0.03)
    assert noisy.diagonal(dim1=1, dim2=2).std().item() == pytest.approx(2.0, rel=0.06)


def test_a_client_upload_is_its_clipped_statistics_plus_noise_of_the_stated_std(tiny: Callable[..., Config]) -> None:
    # Prepare: the same client with and without noise (same clip)
    base = tiny(**{**CHANNEL, "data.train-subset": 300, "cem.stats-clip": 3.0})
    quiet, noisy = SplitClient(base, 0, 3, torch.device("cpu"), None), SplitClient(base.replace(**{"cem.stats-noise": 2.0}), 0, 3, torch.device("cpu"), None)
    centres, _ = quiet.local_centres(None, seed=0)

    # Execute
    clear = quiet.stats_upload(centres, PEERS, "1|0")
    upload = noisy.stats_upload(centres, PEERS, "1|0")

    # Assert: the clear upload is clipped (no residual longer than C: per-cluster |S_j| <= n_j C) ...
    assert bool((clear["sums"].norm(dim=1) <= clear["counts"] * 3.0 + 1e-4).all())
    # ... and the noisy one differs from it by noise of std z C on the 20 x 512 sums, z C^2 on the moments
    assert (upload["sums"] - clear["sums"]).std().item() == pytest.approx(2.0 * 3.0, rel=0.05)
    assert (upload["moments"] - clear["moments"]).std().item() == pytest.approx(2.0 * 9.0, rel=0.05)
    assert torch.equal(upload["centres"], clear["centres"])


# ---------------------------------------------------------------------------- merge


@pytest.mark.parametrize("mode", MODES)
def test_feasible_repairs_negative_counts_and_indefinite_covariances(mode: str) -> None:
    # Prepare: three clusters in 2-d: a negative count, a count of 4 whose noisy second moments
    # are below the squared mean (negative variance), and a sound one
    sums = torch.tensor([[1.0, 1.0], [4.0, 0.0], [2.0, 2.0]], dtype=torch.float64)
    moments = {
        "full": torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[-2.0, 0.0], [0.0, 3.0]], [[4.0, 1.0], [1.0, 4.0]]], dtype=torch.float64),
        "diag": torch.tensor([[1.0, 1.0], [-2.0, 3.0], [4.0, 4.0]], dtype=torch.float64),
        "isotropic": torch.tensor([2.0, 1.0, 8.0], dtype=torch.float64),
    }[mode]
    stats = MixtureStats(torch.zeros(3, 2, dtype=torch.float64), torch.tensor([-2, 4, 2]), sums, moments)

    # Execute
    fixed = stats.feasible()
    mixture = fixed.mixture()

    # Assert: the negative count is an empty cluster (no weight, no sums); every covariance is PSD
    assert fixed.counts.tolist() == [0, 4, 2]
    assert float(fixed.sums[0].abs().sum()) == 0 and float(mixture.weights[0]) == 0
    cov = mixture.cov if mode == "full" else torch.diag_embed(mixture.cov) if mode == "diag" else mixture.cov[:, None, None] * torch.eye(2)
    assert float(torch.linalg.eigvalsh(cov).min()) >= -1e-12
    # the sound cluster is untouched: mean (1, 1), covariance 2 I - I = I (full / diag)
    torch.testing.assert_close(mixture.means[2], torch.tensor([1.0, 1.0], dtype=torch.float64))
    if mode != "isotropic":
        torch.testing.assert_close(fixed.moments[2], moments[2])


@pytest.mark.parametrize("secure", [False, True])
def test_strongly_noised_merge_still_gives_a_finite_bound(tiny: Callable[..., Config], secure: bool) -> None:
    # Prepare: three clients, z = 8 (epsilon about 1 per upload at delta 1e-5), C = 3, with and without masking
    cfg = tiny(**{**CHANNEL, "data.train-subset": 300, "cem.stats-clip": 3.0, "cem.stats-noise": 8.0, "cem.secure-aggregation": secure})
    parties = clients(cfg)
    strategy = strategy_for(cfg)

    # Execute: both refit steps as the server runs them, then the mixture the clients would load
    centres = strategy.combine_cem_centres(replies([c.centres_upload(None, 0, None, PEERS, "1|0") for c in parties], "centres"), 1)  # type: ignore[arg-type]
    merged = strategy.merge_cem_stats(replies([c.stats_upload(centres, PEERS, "1|0") for c in parties], "stats"), centres)  # type: ignore[arg-type]
    cem = ConditionalEntropy(cfg.cem, cfg.noise.sigma, 10, int(merged.counts.sum()))
    cem.load_stats(merged)
    report = cem.report()

    # Assert: feasible statistics and a finite bound
    assert bool((merged.counts >= 0).all()) and bool((merged.moments >= 0).all())
    assert torch.isfinite(centres).all() and centres.shape == (20, 512)
    assert math.isfinite(report["lc"])


def test_noise_is_added_before_masking_so_the_sum_is_the_noisy_sum(tiny: Callable[..., Config]) -> None:
    # Prepare: the same three noisy clients, once masked
    noisy = tiny(**{**CHANNEL, "data.train-subset": 300, "cem.stats-clip": 3.0, "cem.stats-noise": 1.0})
    masked = noisy.replace(**{"cem.secure-aggregation": True})
    centres, _ = clients(noisy)[0].local_centres(None, seed=0)

    # Execute
    clear_merge = strategy_for(noisy).merge_cem_stats(replies([c.stats_upload(centres, PEERS, "1|0") for c in clients(noisy)], "stats"), centres)  # type: ignore[arg-type]
    masked_merge = strategy_for(masked).merge_cem_stats(replies([c.stats_upload(centres, PEERS, "1|0") for c in clients(masked)], "stats"), centres)  # type: ignore[arg-type]

    # Assert: masking changes nothing but the fixed-point rounding: the server reads the sum of the noisy uploads
    assert torch.equal(masked_merge.counts, clear_merge.counts)
    torch.testing.assert_close(masked_merge.sums, clear_merge.sums, rtol=0, atol=1e-5)


def test_the_first_bounded_refit_splits_each_class_mean_and_later_ones_take_a_lloyd_step(tiny: Callable[..., Config]) -> None:
    # Prepare: clip large enough to change nothing, no noise: the Lloyd step is then exact
    cfg = tiny(**{**CHANNEL, "data.train-subset": 300, "cem.stats-clip": 1e6})
    parties = clients(cfg)
    strategy = strategy_for(cfg)
    features = [c.features() for c in parties]
    z = torch.cat([f[0].flatten(1) for f in features])
    y = torch.cat([f[1] for f in features])

    # Execute
    first = strategy.combine_cem_centres(replies([c.centres_upload(None, 0, None, PEERS, "1|0") for c in parties], "centres"), 1)  # type: ignore[arg-type]
    second = strategy.combine_cem_centres(replies([c.centres_upload(first, 0, None, PEERS, "2|1") for c in parties], "centres"), 2, first)  # type: ignore[arg-type]

    # Assert: first refit: both slots of a class lie 1 % of the class mean's norm from it
    means = torch.stack([z[y == c].mean(0) for c in range(10)])
    offsets = (first.reshape(10, 2, -1) - means[:, None]).norm(dim=2)
    torch.testing.assert_close(offsets, 0.01 * means.norm(dim=1, keepdim=True).expand(-1, 2), rtol=1e-3, atol=1e-5)
    # second refit: each centre is the mean of the features nearest to it (one Lloyd step)
    stats = MixtureStats.compute(z, y, first, 2, "diag")
    expected = first.double() + stats.sums.double() / stats.counts.clamp_min(1)[:, None]
    torch.testing.assert_close(second, torch.where((stats.counts > 0)[:, None], expected, first.double()).float(), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------- guarantee


@pytest.mark.parametrize(("mu", "epsilon"), [(0.5, 1.99309), (1.0, 4.37718), (2.0, 9.99726)])
def test_epsilon_of_the_gaussian_mechanism_matches_the_analytic_values(mu: float, epsilon: float) -> None:
    # Execute / Assert: epsilons solved independently (scipy brentq on Balle & Wang's delta(epsilon) = 1e-5)
    assert gaussian_epsilon(mu, 1e-5) == pytest.approx(epsilon, abs=1e-4)
    assert gaussian_delta(mu, gaussian_epsilon(mu, 1e-5)) == pytest.approx(1e-5, rel=1e-6)


@pytest.mark.parametrize("z", [6.0, 10.0, 40.0])
def test_analytic_epsilon_is_at_most_the_classical_one_where_that_holds(z: float) -> None:
    # Prepare: sigma = sensitivity * sqrt(2 ln(1.25/delta)) / epsilon gives (epsilon, delta) for epsilon < 1
    classical = math.sqrt(2 * math.log(1.25 / 1e-5)) / z
    assert classical < 1
    # Execute / Assert
    assert gaussian_epsilon(1 / z, 1e-5) <= classical


def test_privacy_report_composes_the_releases_of_every_refit() -> None:
    # Prepare
    cem = Config.from_flat({"cem.lambda": 0.01, "cem.stats-clip": 3.0, "cem.stats-noise": 4.0}).cem

    # Execute
    report = privacy_report(cem, refits=2)
    off = privacy_report(Config.from_flat({}).cem, refits=2)

    # Assert: an upload of 3 statistics is sqrt(3)/z-GDP, a refit sqrt(5)/z, two refits sqrt(10)/z
    assert report["mu_stats_upload"] == pytest.approx(math.sqrt(3) / 4)
    assert report["epsilon_refit"] == pytest.approx(gaussian_epsilon(math.sqrt(5) / 4))
    assert report["epsilon_run"] == pytest.approx(gaussian_epsilon(math.sqrt(10) / 4))
    assert report["epsilon_stats_upload"] < report["epsilon_refit"] < report["epsilon_run"]
    assert (report["stats_noise"], report["stats_clip"], report["delta"]) == (4.0, 3.0, 1e-5)
    assert off["epsilon_refit"] is None and off["epsilon_run"] is None


# ---------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"cem.stats-noise": 1.0}, "cem.stats-noise needs cem.stats-clip > 0"),
        ({"cem.stats-noise": 1.0, "cem.stats-clip": 3.0, "cem.federation": "local"}, "cem.stats-noise acts on the uploads of cem.federation = global"),
        ({"cem.stats-clip": 3.0, "cem.federation": "local"}, "cem.stats-clip acts on the uploads of cem.federation = global"),
        ({"cem.stats-clip": -1.0}, "cem.stats-clip must be >= 0"),
        ({"cem.stats-noise": -0.5, "cem.stats-clip": 1.0}, "cem.stats-noise must be >= 0"),
    ],
)
def test_bad_noise_settings_fail_with_one_line_naming_the_key(overrides: dict, message: str) -> None:
    # Execute / Assert
    with pytest.raises(ValueError) as err:
        Config.from_flat(overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


# ---------------------------------------------------------------------------- the attack


def test_strong_noise_hides_the_class_means_in_an_upload(tiny: Callable[..., Config]) -> None:
    # Prepare: what the attacker reads from client 0's upload, the cluster means c_j + S_j / n_j,
    # against the client's true class-conditional feature means; z = 0 (clip only) and z = 4
    base = tiny(**{**CHANNEL, "data.train-subset": 300, "cem.stats-clip": 3.0})
    errors = {}
    for z in (0.0, 4.0):
        client = SplitClient(base.replace(**{"cem.stats-noise": z}), 0, 3, torch.device("cpu"), None)
        centres, _ = client.local_centres(None, seed=0)
        feats, labels = client.features()
        feats = feats.flatten(1)
        truth = torch.stack([feats[labels == c].mean(0) for c in range(10)])

        # Execute
        upload = client.stats_upload(centres, PEERS, "1|0")
        counts = upload["counts"].double().clamp_min(0).reshape(10, 2)
        means = (upload["centres"].double() + upload["sums"].double() / upload["counts"].double().clamp_min(1)[:, None]).reshape(10, 2, -1)
        guess = (counts[:, :, None] * means).sum(1) / counts.sum(1, keepdim=True).clamp_min(1)
        errors[z] = float((guess - truth.double()).square().mean())

    # Assert: clipped but clear, the class means are close (clipping biases them a little);
    # with z = 4 the error is many times the spread of the true class means across classes
    spread = float((truth - truth.mean(0)).square().mean())
    assert errors[0.0] < 0.1 * spread
    assert errors[4.0] > 10 * errors[0.0] and errors[4.0] > spread


@pytest.mark.slow  # a Ray simulation and a decoder fit: about a minute
def test_cem_stats_fails_on_strongly_noised_uploads(tmp_path: Path) -> None:
    # Execute: the channel run of tests/test_cem_channel.py with z = 4, C = 25 (about twice the
    # round-2 residuals' RMS, so that the clip alone leaves the attack working: benchmarks/cem_channel_noise.py)
    result = channel_run(tmp_path, secure=False, noise={"cem.stats-clip": 25.0, "cem.stats-noise": 4.0})
    outcome = result["outcome"]

    # Assert: the attack (decoding the means, as it does on a noised channel) no longer beats the
    # mean image (clear: 0.03 of it), and the run recorded its guarantee
    assert outcome["channel_noise"] == 4.0 and outcome["stats_samples"] == 0 and outcome["failed"]
    assert outcome["metrics"]["mse"] > 0.5 * outcome["metrics"]["mse_mean_guess"]
    privacy = result["results"]["cem_privacy"]
    assert privacy["stats_noise"] == 4.0 and privacy["epsilon_refit"] == pytest.approx(gaussian_epsilon(math.sqrt(5) / 4))
