"""The typed config: one set of defaults, strict keys and types, errors that name the key."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from fl_cem.cli import main
from fl_cem.config import Config, flatten, parse_override

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_declares_every_key_with_the_config_default() -> None:
    # Prepare
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    # Execute
    declared = flatten(pyproject["tool"]["flwr"]["app"]["config"])
    # Assert
    assert declared == Config.defaults_flat()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"cem.lamda": 1.0}, "unknown config key 'cem.lamda' (did you mean 'cem.lambda'?)"),
        ({"train.lr": -1.0}, "train.lr must be > 0"),
        ({"train.lr": "fast"}, "'train.lr' expects float"),
        ({"train.epochs": 1.5}, "'train.epochs' expects int"),
        ({"model.cut": 4}, "model.cut must be between 1 and 3 for vgg11"),
        ({"defense.name": "magic"}, "defense.name 'magic' is not a registered defense"),
        ({"attack.name": "oracle"}, "attack.name 'oracle' is not a registered attack"),
        ({"cem.covariance": "banded"}, "cem.covariance must be one of full, diag, isotropic"),
        ({"cem.lambda": 16.0, "noise.sigma": 0.0}, "needs noise.sigma > 0"),
        ({"data.source": "imagefolder"}, "data.root must name an image folder"),
        ({"run.device": "tpu"}, "run.device must be"),
    ],
)
def test_bad_values_fail_with_a_message_naming_the_key(overrides: dict, message: str) -> None:
    # Execute / Assert
    with pytest.raises(ValueError) as err:
        Config.from_flat(overrides)
    assert message in str(err.value)


def test_lambda_is_read_from_its_reserved_word_key() -> None:
    # Execute
    cfg = Config.from_flat({"cem.lambda": 16})
    # Assert: an int in TOML is accepted for a float key
    assert cfg.cem.lam == 16.0 and isinstance(cfg.cem.lam, float)
    assert cfg.to_flat()["cem.lambda"] == 16.0


def test_config_file_with_nested_tables_and_overrides(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "x.toml"
    path.write_text('"data.val-fraction" = 0.2\n[cem]\nlambda = 8.0\n[train]\nepochs = 3\n')
    # Execute
    cfg = Config.load(path, {"train.epochs": 5})
    # Assert
    assert (cfg.cem.lam, cfg.train.epochs, cfg.data.val_fraction) == (8.0, 5, 0.2)


def test_parse_override_reads_toml_values_and_bare_strings() -> None:
    assert parse_override("cem.lambda=16") == ("cem.lambda", 16)
    assert parse_override("data.root=/tmp/x") == ("data.root", "/tmp/x")
    assert parse_override("data.augment = false") == ("data.augment", False)
    with pytest.raises(ValueError, match="key=value"):
        parse_override("cem.lambda")


def test_every_sim_config_loads() -> None:
    paths = sorted((ROOT / "sim_configs").rglob("*.toml"))
    assert paths
    for path in paths:
        if "sweeps" in path.parts:
            continue
        Config.load(path)


def test_cli_reports_bad_config_before_training(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Execute
    code = main(["train", "--set", "model.cut=9", "--set", f"run.output-dir={tmp_path}"])
    # Assert: exit code 2, message names the key, nothing was written
    assert code == 2
    assert "model.cut" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_differences_ignore_where_a_run_executes() -> None:
    # Prepare
    cfg = Config.from_flat({"run.output-dir": "runs", "run.device": "cpu"})
    other = {**cfg.to_flat(), "run.output-dir": "/abs/runs", "run.device": "cuda", "run.resume": False}
    # Execute / Assert
    assert cfg.differences(other) == []
    assert cfg.differences({**other, "cem.lambda": 1.0}) == ["cem.lambda"]


def test_differences_ignore_a_verdict_threshold_so_runs_recorded_under_an_older_default_stay_valid() -> None:
    # Prepare: a run recorded when the clients' alarm threshold defaulted to 0.1
    cfg = Config()
    recorded = {**cfg.to_flat(), "malicious.alarm": 0.1}
    # Execute / Assert: it still resumes and restores (the CV is recorded; 0.1 only made its verdicts)
    assert cfg.differences(recorded) == []
    assert cfg.differences({**recorded, "malicious.gradient-scale": 0.5}) == ["malicious.gradient-scale"]


def test_differences_compare_the_data_root_as_the_file_it_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: a sweep cell names its data relative to the working directory; a federated launch
    # recorded it absolute (an interrupted federated cell failed to resume on this)
    monkeypatch.chdir(tmp_path)
    cfg = Config.from_flat({"data.root": "../shared/data.tar.gz"})
    recorded = {**cfg.to_flat(), "data.root": str((tmp_path / ".." / "shared" / "data.tar.gz").resolve())}
    # Execute / Assert
    assert cfg.differences(recorded) == []
    assert cfg.differences({**recorded, "data.root": str(tmp_path / "other.tar.gz")}) == ["data.root"]


def test_a_checkpoint_from_before_an_upgrade_or_with_other_attack_settings_still_matches() -> None:
    # Prepare: a checkpoint's config that predates one key and ran other attack settings
    cfg = Config()
    older = {k: v for k, v in cfg.to_flat().items() if k != "model.decoder-width"}
    older["attack.epochs"] = 3
    # Execute / Assert: neither changes what training computed; a training key and the
    # interception the curious server records during training still do
    assert cfg.differences(older) == []
    assert cfg.differences({**older, "train.lr": 0.5}) == ["train.lr"]
    assert cfg.differences({**older, "attack.intercept-max": 7}) == ["attack.intercept-max"]
    assert cfg.differences({**older, "model.decoder-width": 0.5}) == ["model.decoder-width"]
