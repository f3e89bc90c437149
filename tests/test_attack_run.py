"""``fl-cem attack`` on finished runs: centralized checkpoints, federated wire recordings, bad folders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pytest
import torch

from fl_cem.attacks.run import attack_run
from fl_cem.cli import main
from fl_cem.config import Config
from fl_cem.reporting.run_dir import RunDir
from fl_cem.training.centralized import train_centralized

from .conftest import simulate

FAST = {"attack.epochs": 1, "attack.batch-size": 64}


def test_attack_refuses_a_folder_that_is_not_a_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Execute / Assert: the message names the folder and what is missing
    with pytest.raises(FileNotFoundError, match="has no results.json"):
        attack_run(str(tmp_path), "decoder", "train")
    assert main(["attack", "--run", str(tmp_path)]) == 2
    assert str(tmp_path) in capsys.readouterr().err


def test_attack_refuses_a_run_without_checkpoint(tiny: Callable[..., Config]) -> None:
    # Prepare: a finished run whose checkpoint was removed
    cfg = tiny(**{"train.epochs": 1})
    train_centralized(cfg, log=lambda _: None)
    RunDir.for_config(cfg).checkpoint_path.unlink()
    # Execute / Assert
    with pytest.raises(FileNotFoundError, match="has no checkpoint.pt"):
        attack_run(str(RunDir.for_config(cfg).root), "decoder", "train")


@pytest.mark.parametrize("mode", ["train", "infer"])
def test_attack_on_a_centralized_run_appends_its_figures(tiny: Callable[..., Config], mode: str) -> None:
    # Prepare
    cfg = tiny(**{"train.epochs": 1})
    train_centralized(cfg, log=lambda _: None)
    root = RunDir.for_config(cfg).root
    # Execute
    outcomes = attack_run(str(root), "decoder", mode, overrides=FAST)
    # Assert
    recorded = json.loads((root / "results.json").read_text())["attacks"]
    assert recorded == outcomes and len(outcomes) == 1
    assert outcomes[0]["target_source"] == "smashed" and outcomes[0]["mode"] == mode
    assert 0 < outcomes[0]["metrics"]["mse"] < 1
    assert Path(outcomes[0]["grid"]).is_file()


def test_a_repeat_of_an_attack_draws_its_own_randomness_on_the_same_targets(tiny: Callable[..., Config]) -> None:
    # Prepare
    cfg = tiny(**{"train.epochs": 1})
    train_centralized(cfg, log=lambda _: None)
    root = str(RunDir.for_config(cfg).root)
    # Execute: the attack, the same attack as repeat 0, and repeat 1
    first, again, repeat = (attack_run(root, "decoder", "train", overrides={**FAST, "attack.seed": seed})[0] for seed in (0, 0, 1))
    # Assert: repeat 0 is the attack as it always ran (bit for bit); repeat 1 trains another
    # inversion model (other MSE) scored on the same images (same mean-image baseline), in its own grid
    assert again["metrics"] == first["metrics"] and (first["attack_seed"], repeat["attack_seed"]) == (0, 1)
    assert repeat["metrics"]["mse"] != first["metrics"]["mse"]
    assert repeat["metrics"]["mse_mean_guess"] == first["metrics"]["mse_mean_guess"] and repeat["targets"] == first["targets"]
    assert Path(repeat["grid"]).name == "decoder_train_repeat1.png" and Path(first["grid"]).name == "decoder_train.png"


def test_attack_on_a_federated_run_inverts_what_the_server_recorded_in_the_last_round(tiny: Callable[..., Config]) -> None:
    # Prepare: two rounds, a recording of 64 rows (each client sends 135 images a round); up to
    # half the split may be scored, so no victim's rows are sampled down
    cfg = tiny(**{"run.name": "fed", "partition.num-partitions": 2, "attack.intercept-max": 64, "attack.holdout": 0.5})
    simulate(cfg, num_clients=2)
    root = RunDir.for_config(cfg).root
    record = torch.load(root / "intercept" / "intercept.pt", weights_only=True)
    # Execute: each client in turn, targets from the wire
    outcomes = attack_run(str(root), "decoder", "train", overrides=FAST)
    # Assert: the latest round's reservoir is all round 2; each victim is scored on its rows
    # there, more than the whole run's sample holds of its last round
    assert [o["victim"] for o in outcomes] == ["client 0", "client 1"]
    latest = record["latest"]
    assert record["latest_round"] == 2 and set(latest["meta"][:, 1].tolist()) == {2} and len(latest["z"]) == 64
    for pid, outcome in enumerate(outcomes):
        in_latest = int((latest["meta"][:, 0] == pid).sum())
        in_whole = int(((record["meta"][:, 0] == pid) & (record["meta"][:, 1] == 2)).sum())
        assert outcome["target_source"] == "wire" and outcome["targets"] == in_latest > in_whole
    with pytest.raises(ValueError, match="no state for client 5"):
        attack_run(str(root), "decoder", "train", client=5, overrides=FAST)


def test_a_federated_victim_that_sent_the_whole_split_leaves_the_attacker_its_data(tiny: Callable[..., Config]) -> None:
    # Prepare: one client, so its last round carries every one of the 270 training images
    cfg = tiny(**{"run.name": "one", "partition.num-partitions": 1})
    simulate(cfg, num_clients=1)
    # Execute
    (outcome,) = attack_run(str(RunDir.for_config(cfg).root), "decoder", "train", overrides=FAST)
    # Assert: 10 % of the split scored (attack.holdout), the other 90 % the attacker's
    assert outcome["target_source"] == "wire" and outcome["targets_offered"] == 27 and outcome["aux"] == 270 - 27


def test_attack_on_a_noise_free_run_reports_no_bound_ratio(tiny: Callable[..., Config]) -> None:
    # Prepare: sigma = 0 makes Theorem 1's bound 0 (no noise, no guaranteed error)
    cfg = tiny(**{"train.epochs": 1, "noise.sigma": 0.0})
    train_centralized(cfg, log=lambda _: None)
    # Execute
    outcome = attack_run(str(RunDir.for_config(cfg).root), "decoder", "train", overrides=FAST)[0]
    # Assert
    assert outcome["mse_lower_bound"] is None and outcome["mse_bound_ratio"] is None


def test_retraining_a_finished_run_keeps_its_attack_results(tiny: Callable[..., Config]) -> None:
    # Prepare
    cfg = tiny(**{"train.epochs": 1})
    train_centralized(cfg, log=lambda _: None)
    attack_run(str(RunDir.for_config(cfg).root), "decoder", "infer", overrides=FAST)
    # Execute: resuming a finished run rewrites results.json
    train_centralized(cfg, log=lambda _: None)
    # Assert
    assert len(RunDir.for_config(cfg).read_results()["attacks"]) == 1
