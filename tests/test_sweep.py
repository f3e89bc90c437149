"""Sweeps: cell expansion and names, a tiny sweep end to end, skipping finished cells, failures."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from fl_cem.config import Config
from fl_cem.experiments import sweep as sweep_module
from fl_cem.experiments.spec import load_sweep
from fl_cem.experiments.sweep import missing_attacks, run_sweep
from fl_cem.reporting.report import write_report

SMOKE = Path(__file__).resolve().parents[1] / "sim_configs" / "sweeps" / "cpu_smoke.toml"

TINY_BASE = """
[base]
"run.device" = "cpu"
"data.source" = "digits"
"data.train-subset" = 200
"data.test-subset" = 100
"model.arch" = "resnet20"
"model.cut" = 1
"train.epochs" = 1
"train.batch-size" = 32
"cem.clusters-per-class" = 2
"""


def write_sweep(folder: Path, text: str, name: str = "s.toml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped two-cell smoke sweep, run once and reported."""
    out = tmp_path_factory.mktemp("sweeps")
    spec = load_sweep(SMOKE, output_dir=out)
    with pytest.MonkeyPatch.context() as patch:
        accept_every_attack(patch)
        summary = run_sweep(spec, log=lambda line: None)
        write_report(spec.root)
    assert (summary.ran, summary.failed) == (2, 0)
    return spec.root


def accept_every_attack(patch: pytest.MonkeyPatch) -> None:
    """These tests check the sweep's plumbing, with attacks of a few steps that cannot beat the
    mean image; the rule that fails such attacks is tested in test_report.py."""
    patch.setattr("fl_cem.attacks.evaluate.MEAN_IMAGE_MARGIN", math.inf)


def test_cells_expand_grid_bundles_executions_and_exclusions_with_stable_names(tmp_path: Path) -> None:
    # Prepare: 2 executions (one expanded over cem.federation) x 2 defense bundles x 2 lambdas, minus none+CEM
    path = write_sweep(
        tmp_path,
        """
execution = ["centralized", { kind = "federated", clients = 2, "cem.federation" = ["local", "global"] }]
exclude = [{ defense = "none", "cem.lambda" = 16.0 }]

[base]
"data.source" = "digits"

[grid]
defense = [
  { label = "none", "defense.name" = "none", "model.bottleneck" = 0 },
  { label = "bottleneck", "defense.name" = "bottleneck" },
]
"cem.lambda" = [0.0, 16.0]
""",
    )

    # Execute
    spec = load_sweep(path, output_dir=tmp_path / "runs")
    cells = spec.cells()

    # Assert: 3 executions x (4 - 1 excluded) cells, names built from labels in axis order
    assert [c.name for c in cells] == [
        f"{e}__{d}_lambda{lam}"
        for e in ("centralized", "federated-local", "federated-global")
        for d, lam in (("none", 0), ("bottleneck", 0), ("bottleneck", 16))
    ]
    fed = next(c for c in cells if c.name == "federated-local__none_lambda0")
    assert fed.execution.kind == "federated"
    assert fed.overrides == {
        "data.source": "digits",
        "defense.name": "none",
        "model.bottleneck": 0,
        "cem.lambda": 0.0,
        "partition.num-partitions": 2,
        "cem.federation": "local",
    }
    assert spec.root == tmp_path / "runs" / "s"


@pytest.mark.parametrize("path", sorted(SMOKE.parent.glob("*.toml")), ids=lambda p: p.stem)
def test_every_cell_of_the_shipped_sweeps_builds_a_valid_config(path: Path) -> None:
    # Execute
    cells = load_sweep(path).cells()

    # Assert: a cell's config fails only for a value it was given, never in the files we ship
    assert cells
    for cell in cells:
        cfg = Config.from_flat({**cell.overrides, "run.name": cell.name})
        assert cfg.cem_idle_reason(cell.execution.kind) is None, cell.name


def test_sweep_file_with_unknown_key_fails_at_load_naming_it(tmp_path: Path) -> None:
    # Prepare
    path = write_sweep(tmp_path, '[grid]\n"cem.lamda" = [0.0, 1.0]\n')

    # Execute / Assert
    with pytest.raises(ValueError, match="cem.lamda"):
        load_sweep(path)


def test_attacks_default_to_decoder_and_gan_in_both_modes(tmp_path: Path) -> None:
    # Prepare
    path = write_sweep(tmp_path, '[base]\n"data.source" = "digits"\n')

    # Execute
    spec = load_sweep(path)

    # Assert: the four MSE columns of Table 1
    assert [(a.attack, a.mode) for a in spec.attacks] == [("decoder", "train"), ("decoder", "infer"), ("gan", "train"), ("gan", "infer")]


def test_smoke_sweep_report_has_one_row_per_cell_and_the_table1_columns(smoke: Path) -> None:
    # Prepare
    report = json.loads((smoke / "report" / "report.json").read_text())

    # Execute
    with (smoke / "report" / "rows.csv").open() as handle:
        rows = list(csv.DictReader(handle))

    # Assert: bottleneck without and with CEM, one seed each, every Table 1 column and ours
    assert [r["label"] for r in report["rows"]] == ["bottleneck", "bottleneck+CEM"]
    assert [r["n"] for r in report["rows"]] == [1, 1]
    table1 = ["accuracy", "decoder_train_mse", "decoder_infer_mse", "gan_train_mse", "gan_infer_mse"]
    ours = ["decoder_train_psnr", "gan_infer_ssim", "hxz_relative", "mse_lower_bound", "train_s", "attack_s"]
    assert report["columns"][:5] == table1 and set(ours) <= set(report["columns"])
    assert [r["method"] for r in rows] == ["bottleneck", "bottleneck+CEM"]
    assert {f"{c}_mean" for c in table1 + ours} <= set(rows[0])
    assert all(float(r["decoder_train_mse_mean"]) > 0 for r in rows)
    assert [a["methods"] for a in report["averages"]] == [["bottleneck"]]
    markdown = (smoke / "report" / "report.md").read_text()
    assert "**Average w/o CEM**" in markdown and "**Average w/ CEM**" in markdown and "**Gain**" in markdown
    machine = report["provenance"]["machines"]
    assert len(machine) == 1 and f"torch {torch.__version__}" in machine[0] and machine[0] in markdown
    assert len(report["provenance"]["started"]) == 2
    for figure in report["figures"]:
        assert (smoke / "report" / figure).stat().st_size > 0
    assert any(f.startswith("fig5_") for f in report["figures"]) and any(f.startswith("fig4b_") for f in report["figures"])
    assert not any(f.startswith("fig4a_") for f in report["figures"])  # sigma is not varied in the smoke sweep
    assert len(list((smoke / "report" / "tb_hparams").iterdir())) == 3  # the sweep's writer + one run per cell


def test_rerunning_a_finished_sweep_trains_and_attacks_nothing(smoke: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare
    calls: list[str] = []
    monkeypatch.setattr(sweep_module, "train_centralized", lambda *a, **k: calls.append("train"))
    monkeypatch.setattr(sweep_module, "attack_run", lambda *a, **k: calls.append("attack") or [])
    results = sorted(smoke.glob("*/results.json"))
    before = [p.stat().st_mtime_ns for p in results]

    # Execute
    summary = run_sweep(load_sweep(SMOKE, output_dir=smoke.parent), log=lambda line: None)

    # Assert
    assert (summary.ran, summary.skipped, summary.failed) == (0, 2, 0)
    assert calls == []
    assert [p.stat().st_mtime_ns for p in results] == before


def test_failing_cell_is_recorded_and_the_other_cell_completes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    accept_every_attack(monkeypatch)
    # Prepare: the second learning rate is invalid, so that cell fails while building its config
    path = write_sweep(
        tmp_path,
        'attacks = [{ attack = "decoder", mode = "train", "attack.epochs" = 1 }]\n' + TINY_BASE + '[grid]\n"train.lr" = [0.02, -1.0]\n',
    )
    spec = load_sweep(path, output_dir=tmp_path / "runs")

    # Execute
    summary = run_sweep(spec, log=lambda line: None)
    report = write_report(spec.root)

    # Assert
    assert (summary.ran, summary.failed) == (1, 1)
    status = json.loads((spec.root / "centralized__lr-1" / "status.json").read_text())
    assert status["status"] == "failed" and "train.lr" in status["error"] and "Traceback" in status["traceback"]
    cells = {c["name"]: c for c in report["cells"]}
    assert cells["centralized__lr-1"]["status"] == "failed"
    assert cells["centralized__lr0.02"]["status"] == "done" and cells["centralized__lr0.02"]["values"]["decoder_train_mse"] > 0
    assert [r["cells"] for r in report["rows"]] == [["centralized__lr0.02"]]
    assert "centralized__lr-1 | failed | ValueError: train.lr must be > 0" in (spec.root / "report" / "report.md").read_text()


def test_rerun_of_a_trained_cell_runs_only_its_missing_attack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: a finished one-cell sweep whose recorded attack is then removed
    path = write_sweep(tmp_path, 'attacks = [{ attack = "decoder", mode = "train", "attack.epochs" = 1 }]\n' + TINY_BASE)
    spec = load_sweep(path, output_dir=tmp_path / "runs")
    run_sweep(spec, log=lambda line: None)
    results_path = spec.root / "centralized" / "results.json"
    results = json.loads(results_path.read_text())
    results["attacks"] = []
    results_path.write_text(json.dumps(results))
    calls: list[Any] = []
    real_attack = sweep_module.attack_run
    monkeypatch.setattr(sweep_module, "train_centralized", lambda *a, **k: calls.append("train"))
    monkeypatch.setattr(sweep_module, "attack_run", lambda *a, **k: calls.append(a[1:3]) or real_attack(*a, **k))

    # Execute
    summary = run_sweep(spec, log=lambda line: None)

    # Assert
    assert (summary.ran, summary.failed) == (1, 0)
    assert calls == [("decoder", "train")]
    assert [a["attack"] for a in json.loads(results_path.read_text())["attacks"]] == ["decoder"]


@pytest.mark.slow  # a Ray simulation: about 20 s
def test_federated_cell_is_attacked_per_client_and_reported_as_federated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    accept_every_attack(monkeypatch)
    # Prepare: one federated cell, 2 clients x 1 round
    path = write_sweep(
        tmp_path,
        'execution = [{ kind = "federated", clients = 2, "federated.rounds" = 1 }]\n'
        'attacks = [{ attack = "decoder", mode = "infer", "attack.epochs" = 1 }]\n' + TINY_BASE,
    )
    spec = load_sweep(path, output_dir=tmp_path / "runs")

    # Execute
    summary = run_sweep(spec, log=lambda line: None)
    report = write_report(spec.root)

    # Assert: one attack per client, averaged into the federated row
    assert (summary.ran, summary.failed) == (1, 0)
    results_path = spec.root / "federated" / "results.json"
    attacks = json.loads(results_path.read_text())["attacks"]
    assert sorted(a["victim"] for a in attacks) == ["client 0", "client 1"]
    (row,) = report["rows"]
    assert row["execution"] == "federated"
    assert row["mean"]["decoder_infer_mse"] == pytest.approx(sum(a["metrics"]["mse"] for a in attacks) / 2)

    # Execute: drop one client's attack and run again
    results = json.loads(results_path.read_text())
    results["attacks"] = results["attacks"][:1]
    results_path.write_text(json.dumps(results))
    calls: list[str] = []
    monkeypatch.setattr(sweep_module, "run_federated", lambda *a, **k: calls.append("train"))
    rerun = run_sweep(spec, log=lambda line: None)

    # Assert: the server's recorded config matches the cell's, so only the attack runs again
    assert (rerun.ran, rerun.failed, calls) == (1, 0, [])
    assert len(json.loads(results_path.read_text())["attacks"]) == 3


def test_paper_sweep_rows_are_read_as_defense_and_cem_setting_with_no_extra_columns() -> None:
    # Prepare: every cell of the paper-scale sweep as a finished run with its full config
    from fl_cem.reporting.collect import RunRecord
    from fl_cem.reporting.table import assign_roles

    cells = load_sweep(SMOKE.parent / "paper_cifar10.toml").cells()
    records = [
        RunRecord(c.name, c.execution.label, "done", Config.from_flat({**c.overrides, "run.name": c.name}).to_flat()) for c in cells
    ]

    # Execute
    roles = assign_roles(records)

    # Assert: per-defense keys (No_defense's sigma 0, warm-ups that differ by execution) belong to the
    # method, the variant to the CEM setting, and no key splits the table into blocks
    assert roles.method[0] == "defense.name" and {"noise.sigma", "model.bottleneck", "defense.adversary-warmup"} <= set(roles.method)
    assert roles.cem == ("cem.lambda", "cem.variant")
    assert roles.other == ()


def test_sweep_refuses_a_cell_where_cem_cannot_act_before_training_anything(tmp_path: Path) -> None:
    # Prepare: the official variant fits its first mixture after epoch 1; one epoch never uses it
    path = write_sweep(tmp_path, '[sweep]\nname = "idle"\n' + TINY_BASE + '"cem.variant" = "official"\n[grid]\n"cem.lambda" = [0.0, 16.0]\n')
    spec = load_sweep(path, output_dir=tmp_path / "out")
    # Execute / Assert
    with pytest.raises(ValueError, match="CEM cannot act.*never acts: the official variant fits its first mixture after epoch 1"):
        run_sweep(spec, log=lambda line: None)
    assert not (tmp_path / "out").exists()


def test_archived_cell_is_restored_instead_of_trained_and_a_stale_copy_is_not(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    accept_every_attack(monkeypatch)
    # Prepare: a one-cell sweep that archives its finished cell, then loses its run folder
    archive = tmp_path / "committed"
    text = f'attacks = [{{ attack = "decoder", mode = "train", "attack.epochs" = 1 }}]\n[sweep]\narchive = "{archive}"\n' + TINY_BASE
    spec = load_sweep(write_sweep(tmp_path, text), output_dir=tmp_path / "runs")
    run_sweep(spec, log=lambda line: None)
    archived = sorted(p.relative_to(archive).as_posix() for p in archive.rglob("*") if p.is_file())
    trained = json.loads((spec.root / "centralized" / "results.json").read_text())
    shutil.rmtree(spec.root)
    calls: list[str] = []
    monkeypatch.setattr(sweep_module, "train_centralized", lambda *a, **k: calls.append("train"))
    monkeypatch.setattr(sweep_module, "attack_run", lambda *a, **k: calls.append("attack") or [])

    # Execute
    lines: list[str] = []
    summary = run_sweep(spec, log=lines.append)
    report = write_report(spec.root)

    # Assert: restored from the archive, nothing trained or attacked, the report reads it
    assert archived == ["centralized/attacks/decoder_train.png", "centralized/config.toml", "centralized/results.json"]
    assert (summary.ran, summary.skipped, calls) == (0, 1, [])
    assert any("restored from" in line for line in lines)
    (row,) = report["rows"]
    assert row["mean"]["decoder_train_mse"] == pytest.approx(trained["attacks"][0]["metrics"]["mse"])
    assert report["cells"][0]["grids"]["decoder_train"].endswith("decoder_train.png")

    # Execute: the sweep file changes a training key, so the archived copy is stale
    shutil.rmtree(spec.root)
    changed = load_sweep(write_sweep(tmp_path, text.replace('"train.batch-size" = 32', '"train.batch-size" = 16')), output_dir=tmp_path / "runs")
    summary = run_sweep(changed, log=lambda line: None)

    # Assert: the cell trains again rather than report another config's results
    assert calls == ["train"] and summary.skipped == 0


def test_federated_attacks_run_only_on_the_named_victims(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: a trained three-client cell (its results only) and attacks naming client 1
    path = write_sweep(tmp_path, 'attacks = [{ attack = "decoder", mode = ["train", "infer"], victims = [1] }]\n' + TINY_BASE)
    spec = load_sweep(path, output_dir=tmp_path / "runs")
    (cell,) = spec.cells()
    folder = spec.root / cell.name
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"kind": "federated", "clients": 3, "final": {"test_accuracy": 0.5}, "attacks": []}))
    (folder / "checkpoint.pt").touch()
    calls: list[tuple[Any, ...]] = []

    def fake_attack(run: str, attack: str, mode: str, client: int | None, overrides: dict[str, Any]) -> list[dict[str, Any]]:
        calls.append((attack, mode, client))
        return []

    monkeypatch.setattr(sweep_module, "attack_run", fake_attack)

    # Execute
    status = sweep_module.run_cell(cell, spec.root, spec.attacks, log=lambda line: None)

    # Assert: one attack per mode, on client 1 only; recorded for client 1 it is complete
    assert status["status"] == "done"
    assert calls == [("decoder", "train", 1), ("decoder", "infer", 1)]
    results = {"kind": "federated", "clients": 3, "attacks": [{"attack": "decoder", "mode": "train", "victim": "client 1", "status": "finished"}]}
    assert [a.mode for a in sweep_module.missing_attacks(results, spec.attacks)] == ["infer"]
    with pytest.raises(ValueError, match="victims must be a list of client partition ids"):
        load_sweep(write_sweep(tmp_path, 'attacks = [{ attack = "decoder", victims = ["a"] }]\n' + TINY_BASE, "bad.toml"))


def test_an_attack_limited_to_some_cells_runs_and_is_required_only_there(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: two trained cells (results and a checkpoint); the decoder on both, fora on lr0.02 only
    text = (
        'attacks = [{ attack = "decoder", mode = "train" }, { attack = "fora", mode = "train", cells = ["*lr0.02"] }]\n'
        + TINY_BASE
        + '[grid]\n"train.lr" = [0.01, 0.02]\n'
    )
    spec = load_sweep(write_sweep(tmp_path, text), output_dir=tmp_path / "runs")
    for cell in spec.cells():
        (spec.root / cell.name).mkdir(parents=True)
        (spec.root / cell.name / "results.json").write_text(json.dumps({"config": {}, "final": {"test_accuracy": 0.5}, "attacks": []}))
        (spec.root / cell.name / "checkpoint.pt").touch()
    calls: list[tuple[str, str]] = []
    monkeypatch.setattr(sweep_module, "check_same_config", lambda results, cfg: None)
    monkeypatch.setattr(sweep_module, "attack_run", lambda run, attack, mode, *a: calls.append((Path(run).name, attack)) or [])

    # Execute
    run_sweep(spec, log=lambda line: None)

    # Assert: fora ran on the matching cell only, and only there is it missing until recorded
    assert calls == [("centralized__lr0.01", "decoder"), ("centralized__lr0.02", "decoder"), ("centralized__lr0.02", "fora")]
    recorded = {"final": {"test_accuracy": 0.5}, "attacks": [{"attack": "decoder", "mode": "train", "victim": "centralized"}]}
    first, second = spec.cells()
    assert sweep_module.missing_attacks(recorded, spec.attacks_for(first)) == []
    assert [a.attack for a in sweep_module.missing_attacks(recorded, spec.attacks_for(second))] == ["fora"]
    assert spec.manifest()["attacks"][1]["cells"] == ["*lr0.02"]
    with pytest.raises(ValueError, match="cells must be a list of cell-name patterns"):
        load_sweep(write_sweep(tmp_path, 'attacks = [{ attack = "decoder", cells = [3] }]\n' + TINY_BASE, "bad.toml"))


def test_a_restored_cell_missing_an_attack_trains_again_and_keeps_its_restored_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: a finished cell as restored from an archive (results, no checkpoint) lacking the fora attack
    path = write_sweep(tmp_path, 'attacks = [{ attack = "fora", mode = "train" }]\n' + TINY_BASE)
    spec = load_sweep(path, output_dir=tmp_path / "runs")
    (cell,) = spec.cells()
    folder = spec.root / cell.name
    folder.mkdir(parents=True)
    restored = {"final": {"test_accuracy": 0.5}, "attacks": [{"attack": "decoder", "mode": "train", "victim": "centralized"}]}
    (folder / "results.json").write_text(json.dumps(restored))
    calls: list[str] = []
    monkeypatch.setattr(sweep_module, "check_same_config", lambda results, cfg: None)
    monkeypatch.setattr(sweep_module, "train_centralized", lambda *a, **k: calls.append("train") or {"final": {"test_accuracy": 0.6}})
    monkeypatch.setattr(sweep_module, "attack_run", lambda run, attack, mode, *a: calls.append(attack) or [])

    # Execute
    status = sweep_module.run_cell(cell, spec.root, spec.attacks, log=lambda line: None)

    # Assert: trained, then attacked; the restored results are kept aside, not mixed with the new model's
    assert status["status"] == "done" and calls == ["train", "fora"]
    assert json.loads((folder / "results.previous.json").read_text()) == restored


def test_attack_repeats_expand_to_one_attack_each_and_each_is_required_on_its_own(tmp_path: Path) -> None:
    # Prepare: the GAN attack in three repeats; a cell that recorded repeats 0 and 2
    path = write_sweep(tmp_path, 'attacks = [{ attack = "gan", mode = "train", "attack.seed" = [0, 1, 2] }]\n' + TINY_BASE)
    spec = load_sweep(path, output_dir=tmp_path / "runs")
    recorded = {"attacks": [{"attack": "gan", "mode": "train", "victim": "centralized", "attack_seed": seed} for seed in (0, 2)]}
    # Execute
    missing = missing_attacks(recorded, spec.attacks)
    # Assert: repeat 0 carries no key (the attack as it ran before repeats existed); repeat 1 is missing
    assert [(a.attack, a.repeat, a.overrides) for a in spec.attacks] == [("gan", 0, {}), ("gan", 1, {"attack.seed": 1}), ("gan", 2, {"attack.seed": 2})]
    assert [a.repeat for a in missing] == [1]
    with pytest.raises(ValueError, match="attack.seed must be"):
        load_sweep(write_sweep(tmp_path, 'attacks = [{ attack = "gan", "attack.seed" = [1, 1] }]\n' + TINY_BASE, "bad.toml"))
