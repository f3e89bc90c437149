"""Feature-space hijacking (malicious.attack = fsha): the inversion it buys, and the clients' check that sees it."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from fl_cem.config import Config
from fl_cem.federated.detection import norm_dispersion, round_verdict
from fl_cem.federated.hijack import FeatureSpaceHijack
from fl_cem.federated.reference import run_reference
from fl_cem.models.split import build_split_model
from fl_cem.reporting.run_dir import RunDir
from fl_cem.training.centralized import train_centralized

from .conftest import TINY, simulate, simulate_killed_in_round_two

DIGITS = {**TINY, "data.train-subset": 0, "data.test-subset": 0, "federated.rounds": 5}
"""All of digits (1,294 training images: 40 batches a round for one client, 200 hijack steps in
all) and the 359 test images as the server's public data; about 30 s for five rounds."""

LR = 0.05
"""The schedule's rate handed to ``FeatureSpaceHijack.step`` (unused unless ``malicious.follow-rate``)."""


@pytest.fixture(scope="module")
def digits_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """The same no-defense client under an honest server, a hijacking one, and one that cancels the client's momentum, in-process."""
    out = tmp_path_factory.mktemp("fsha")
    runs = {}
    for name, keys in {"none": {}, "fsha": {"malicious.attack": "fsha"}, "fsha_cancelling": {"malicious.attack": "fsha", "malicious.cancel-momentum": True}}.items():
        cfg = Config.from_flat({**DIGITS, **keys, "run.output-dir": str(out), "run.name": name})
        runs[name] = run_reference(cfg, 1, log=lambda _: None)
    return runs


def test_fsha_makes_a_no_defense_clients_features_invertible(digits_runs: dict[str, dict[str, Any]]) -> None:
    # Execute
    hijack = [r["hijack"] for r in digits_runs["fsha"]["rounds"]]
    # Assert: the inversion improves over the rounds and ends well below the mean image
    assert hijack[-1]["inversion_mse"] < hijack[0]["inversion_mse"]
    assert not hijack[-1]["failed"]
    assert hijack[-1]["mse_to_mean_image"] < 0.6
    assert all(h["scored"] == 256 for h in hijack)
    # an honest server trains no pilot: it records no inversion
    assert all(r["hijack"] == {} for r in digits_runs["none"]["rounds"])


def test_gradient_norm_check_separates_honest_from_hijacked_rounds(digits_runs: dict[str, dict[str, Any]]) -> None:
    # Execute
    honest = [r["client"] for r in digits_runs["none"]["rounds"]]
    hijacked = [r["client"] for r in digits_runs["fsha"]["rounds"]]
    cancelling = [r["client"] for r in digits_runs["fsha_cancelling"]["rounds"]]
    # Assert: every round is classified right, with room on both sides of the threshold; the
    # momentum-cancelling server's gradients spread more (up to 0.157 in README's runs) and are flagged too
    threshold = Config().malicious.alarm
    assert [r["hijack_alarm"] for r in honest] == [0.0] * 5
    assert [r["hijack_alarm"] for r in hijacked] == [1.0] * 5
    assert [r["hijack_alarm"] for r in cancelling] == [1.0] * 5
    assert max(r["gradient_norm_cv"] for r in hijacked + cancelling) < threshold / 1.2
    assert min(r["gradient_norm_cv"] for r in honest) > threshold * 1.5


def test_norm_dispersion_is_the_coefficient_of_variation_of_per_sample_norms() -> None:
    # Prepare: per-sample norms 1 and 3 (mean 2, sample std sqrt(2)); then equal norms
    grads = torch.zeros(2, 2, 2, 2)
    grads[0, 0, 0, 0] = 1.0
    grads[1, 1, 1, 1] = -3.0
    # Execute / Assert
    assert norm_dispersion(grads) == pytest.approx(2**0.5 / 2)
    assert norm_dispersion(torch.ones(4, 3)) == pytest.approx(0.0)
    assert norm_dispersion(torch.ones(1, 3)) is None
    assert norm_dispersion(torch.zeros(4, 3)) is None
    # a round's verdict: the mean over the batches that defined one
    assert round_verdict({"gradient_norm_cv": 0.3, "gradient_norm_cv_batches": 2.0}, 0.1) == {"gradient_norm_cv": 0.15, "hijack_alarm": 0.0}
    assert round_verdict({}, 0.1) == {}


def test_the_flower_server_app_hijacks_and_reports_each_round(tiny: Callable[..., Config]) -> None:
    # Prepare: two clients through the real ServerApp and ClientApp
    cfg = tiny(**{"run.name": "fsha", "partition.num-partitions": 2, "federated.rounds": 2, "malicious.attack": "fsha", "malicious.scored": 64})
    # Execute
    simulate(cfg, num_clients=2)
    reference = run_reference(cfg.replace(**{"run.name": "fsha-reference"}), 2, log=lambda _: None)
    # Assert: results.json, TensorBoard and the clients' verdicts carry the hijack per round
    run = RunDir.for_config(cfg)
    results = json.loads(run.results_path.read_text())
    assert results["status"] == "finished"
    for ours, theirs in zip(results["rounds"], reference["rounds"], strict=True):
        assert set(ours["hijack"]) == {"inversion_mse", "mean_image_mse", "mse_to_mean_image", "scored", "autoencoder_mse", "critic_distance", "failed"}
        assert ours["hijack"]["scored"] == 64
        assert ours["client"]["hijack_alarm"] == 1.0
        # the Flower path serves what the in-process protocol serves
        assert ours["hijack"]["inversion_mse"] == pytest.approx(theirs["hijack"]["inversion_mse"], rel=1e-3)
        assert ours["client"]["gradient_norm_cv"] == pytest.approx(theirs["client"]["gradient_norm_cv"], rel=1e-3)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(run.tb_dir)).Reload()
    assert {"hijack/inversion_mse", "hijack/mean_image_mse", "client/gradient_norm_cv", "client/hijack_alarm"} <= set(board.Tags()["scalars"])
    checkpoint = torch.load(run.checkpoint_path, weights_only=True)
    assert checkpoint["server"]["hijack"]["steps"] > 0


def test_cancelling_momentum_sends_this_critics_gradient_less_momentum_times_the_last_sent_ones(tiny: Callable[..., Config]) -> None:
    # Prepare: the same hijacker with and without cancelling, and two clients' batches
    public = torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8)
    cfg = tiny(**{"malicious.attack": "fsha", "malicious.cancel-momentum": True, "train.momentum": 0.9})
    shape = build_split_model(cfg.model, (1, 8, 8), 10, (0.5,), (0.3,)).smashed_shape
    z = torch.randn(4, 16, *shape, generator=torch.Generator().manual_seed(0))
    cancelling = FeatureSpaceHijack(cfg, public, 10, False, shape, torch.device("cpu"))
    plain = FeatureSpaceHijack(cfg.replace(**{"malicious.cancel-momentum": False}), public, 10, False, shape, torch.device("cpu"))

    def critic_gradient(weights: dict[str, torch.Tensor], batch: torch.Tensor) -> torch.Tensor:
        critic = cancelling.sent_critic
        critic.load_state_dict(weights)
        private = batch.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(critic(private).mean(), private)
        return grad

    # Execute: client 0, client 1, then client 0 again
    sent_to_0 = {k: v.clone() for k, v in cancelling.critic.state_dict().items()}
    first = cancelling.step(z[0], (0, 1, 0, 0), LR)
    plain_first = plain.step(z[0], (0, 1, 0, 0), LR)
    cancelling.step(z[1], (1, 1, 0, 0), LR)
    current = {k: v.clone() for k, v in cancelling.critic.state_dict().items()}
    second = cancelling.step(z[2], (0, 1, 0, 1), LR)
    # Assert: a client's first batch gets the plain gradient; its next one this critic's less 0.9
    # times the gradient of the critic it was last sent from (not client 1's), both at this batch
    torch.testing.assert_close(first, plain_first, rtol=0, atol=0)
    expected = 0.1 * (critic_gradient(current, z[2]) - 0.9 * critic_gradient(sent_to_0, z[2]))
    torch.testing.assert_close(second, expected)
    assert not torch.allclose(second, 0.1 * critic_gradient(current, z[2]))


def test_following_the_rate_divides_the_gradient_by_the_schedules_share_of_train_lr(tiny: Callable[..., Config]) -> None:
    # Prepare: the same hijacker following the rate and not (train.lr 0.05), one batch each
    public = torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8)
    cfg = tiny(**{"malicious.attack": "fsha", "train.lr": 0.05})
    shape = build_split_model(cfg.model, (1, 8, 8), 10, (0.5,), (0.3,)).smashed_shape
    z = torch.randn(16, *shape, generator=torch.Generator().manual_seed(0))

    def sent(follow: bool, lr: float) -> torch.Tensor:
        hijacker = FeatureSpaceHijack(cfg.replace(**{"malicious.follow-rate": follow}), public, 10, False, shape, torch.device("cpu"))
        return hijacker.step(z, (0, 1, 0, 0), lr)

    # Execute / Assert: at a quarter of train.lr it sends 4x the gradient; the plain attack the
    # same whatever the rate; below 1/100 of train.lr the factor stops at 100
    plain = sent(False, 0.05)
    torch.testing.assert_close(sent(False, 0.0125), plain, rtol=0, atol=0)
    torch.testing.assert_close(sent(True, 0.05), plain)
    torch.testing.assert_close(sent(True, 0.0125), 4 * plain)
    torch.testing.assert_close(sent(True, 1e-6), 100 * plain)


@pytest.mark.parametrize("augment", [False, True])
def test_the_pilot_trains_on_public_images_augmented_as_the_clients_augment_theirs(tiny: Callable[..., Config], augment: bool) -> None:
    # Prepare: public images with no black pixel, and a pilot that records what it is given
    public = torch.randint(1, 256, (64, 3, 16, 16), dtype=torch.uint8)
    cfg = tiny(**{"malicious.attack": "fsha", "malicious.augment": augment, "data.augment": True})
    shape = build_split_model(cfg.model, (3, 16, 16), 10, (0.5,) * 3, (0.3,) * 3).smashed_shape
    hijacker = FeatureSpaceHijack(cfg, public, 10, True, shape, torch.device("cpu"))
    seen: list[torch.Tensor] = []
    hijacker.pilot.register_forward_pre_hook(lambda _, args: seen.append(args[0].detach().clone()))
    z = torch.rand(2, 32, *shape, generator=torch.Generator().manual_seed(0))
    # Execute
    for i in range(2):
        hijacker.step(z[i], (0, 1, 0, i), LR)
    # Assert: augmented, most rows have the crop's zero border (padding 2 at 16x16) and about
    # half are mirrored; otherwise every row is a public image as it is
    images = torch.cat(seen)
    exact = {tuple(row.flatten().tolist()) for row in hijacker.public}
    unchanged = sum(tuple(row.flatten().tolist()) in exact for row in images)
    bordered = int((images.amax(dim=(1, 3)) == 0).any(dim=1).logical_or((images.amax(dim=(1, 2)) == 0).any(dim=1)).sum())
    if augment:
        assert bordered > len(images) / 2 and unchanged < len(images) / 4
    else:
        assert bordered == 0 and unchanged == len(images)


@pytest.mark.parametrize("cancel", [False, True])
def test_a_restored_hijacker_takes_the_same_next_steps(tiny: Callable[..., Config], cancel: bool) -> None:
    # Prepare: a hijacker that has served 3 batches, checkpointed, and a fresh one loaded from it
    cfg = tiny(**{"malicious.attack": "fsha", "noise.sigma": 0.1, "malicious.cancel-momentum": cancel, "malicious.augment": cancel})
    public = torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8)
    shape = build_split_model(cfg.model, (1, 8, 8), 10, (0.5,), (0.3,)).smashed_shape
    z = torch.randn(8, 16, *shape, generator=torch.Generator().manual_seed(0))

    def hijacker() -> FeatureSpaceHijack:
        return FeatureSpaceHijack(cfg, public, 10, False, shape, torch.device("cpu"))

    original = hijacker()
    for i in range(3):
        original.step(z[i], (0, 1, 0, i), LR)
    restored = hijacker()
    restored.load_state_dict(torch.load(_saved(original.state_dict()), weights_only=True))
    # Execute: both serve the next batches (a round's start, as after a resume)
    original.start_round()
    restored.start_round()
    sent = [(original.step(z[i], (0, 2, 1, i), LR), restored.step(z[i], (0, 2, 1, i), LR)) for i in range(3, 8)]
    # Assert: the same gradients to the client, the same weights and optimizer moments after
    for a, b in sent:
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for part in ("pilot", "inverse", "critic"):
        for key, value in original.state_dict()[part].items():
            torch.testing.assert_close(value, restored.state_dict()[part][key], rtol=0, atol=0, msg=f"{part}.{key}")
    assert original.state_dict()["steps"] == restored.state_dict()["steps"] == 8
    # a fresh hijacker (nothing restored) would have sent something else
    assert not torch.equal(hijacker().step(z[3], (0, 2, 1, 3), LR), sent[0][0])


def _saved(state: dict[str, Any]) -> Any:
    """``state`` through ``torch.save`` into memory, as a checkpoint stores it."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return buffer


def test_a_killed_fsha_run_resumes_to_the_same_rounds(tiny: Callable[..., Config]) -> None:
    # Prepare: the broken run loses every client in round 2, after round 1 was checkpointed
    common = {"partition.num-partitions": 2, "federated.rounds": 3, "federated.min-clients": 1, "malicious.attack": "fsha", "malicious.scored": 64}
    straight = tiny(**common, **{"run.name": "fsha-straight"})
    broken = tiny(**common, **{"run.name": "fsha-broken"})

    # Execute
    simulate(straight, num_clients=2)
    simulate_killed_in_round_two(broken, num_clients=2)
    killed = torch.load(RunDir.for_config(broken).checkpoint_path, weights_only=True)
    simulate(broken, num_clients=2)
    # Assert: it was killed after round 1, and rounds 2-3 (served by the restored pilot, decoder,
    # critic and their Adam states) score and report exactly what the uninterrupted run's did
    assert killed["round"] == 2 and killed["server"]["hijack"]["steps"] > 0
    a = json.loads(RunDir.for_config(straight).results_path.read_text())["rounds"]
    b = json.loads(RunDir.for_config(broken).results_path.read_text())["rounds"]
    assert [r["round"] for r in b] == [1, 2, 3]
    for ours, theirs in zip(a, b, strict=True):
        assert ours["hijack"] == theirs["hijack"]
        assert ours["client"]["gradient_norm_cv"] == theirs["client"]["gradient_norm_cv"]
        assert ours["test"]["accuracy_mean"] == theirs["test"]["accuracy_mean"]
    sa = torch.load(RunDir.for_config(straight).checkpoint_path, weights_only=True)["server"]["hijack"]
    sb = torch.load(RunDir.for_config(broken).checkpoint_path, weights_only=True)["server"]["hijack"]
    assert sa["steps"] == sb["steps"]
    for part in ("pilot", "inverse", "critic"):
        for key in sa[part]:
            torch.testing.assert_close(sa[part][key], sb[part][key], rtol=0, atol=0, msg=f"{part}.{key}")


def test_malicious_attack_is_validated_and_refused_centrally(tiny: Callable[..., Config], tmp_path: Path) -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match="malicious.attack must be one of none, fsha"):
        tiny(**{"malicious.attack": "tiger"})
    with pytest.raises(ValueError, match="malicious.gradient-scale must be > 0"):
        tiny(**{"malicious.gradient-scale": 0.0})
    with pytest.raises(ValueError, match="malicious.alarm must be >= 0"):
        tiny(**{"malicious.alarm": -1.0})
    with pytest.raises(ValueError, match="federated server's attack"):
        train_centralized(tiny(**{"malicious.attack": "fsha"}), log=lambda _: None)
