"""Every defense makes the decoder attack worse than no defense, on a short real-data run.

Runs the shipped sweep ``sim_configs/sweeps/defense_check.toml`` (one short CIFAR-10 run per
registered defense, each attacked by the decoder MIA) and compares each defense's attack MSE
with the No_defense row's. The figures of a full run are in
``benchmarks/results/defense_check/``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fl_cem.registry import list_defenses
from fl_cem.experiments.spec import load_sweep
from fl_cem.experiments.sweep import run_sweep
from fl_cem.reporting.run_dir import RunDir

ROOT = Path(__file__).resolve().parents[1]
CHECK = ROOT / "sim_configs" / "sweeps" / "defense_check.toml"
SHARED_CIFAR = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


def test_the_check_covers_every_registered_defense() -> None:
    checked = [cell.overrides["defense.name"] for cell in load_sweep(CHECK).cells()]
    assert sorted(checked) == sorted(list_defenses())


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_CIFAR.is_file(), reason="the shared CIFAR-10 tarball is not on this machine")
def test_each_defense_raises_the_decoder_attack_mse_over_no_defense(tmp_path: Path) -> None:
    # Prepare
    spec = load_sweep(CHECK, output_dir=tmp_path, overrides={"data.root": str(SHARED_CIFAR)})
    # Execute
    summary = run_sweep(spec, log=print)
    # Assert: every cell ran, and the sign of MSE(defense) - MSE(none) is positive for each
    assert summary.failed == 0
    mse = {}
    for cell in spec.cells():
        attacks = RunDir(spec.root / cell.name).read_results()["attacks"]
        mse[cell.overrides["defense.name"]] = attacks[0]["metrics"]["mse"]
    print(json.dumps(mse, indent=2))
    weaker = {name: value for name, value in mse.items() if name != "none" and value <= mse["none"]}
    assert not weaker, f"decoder-attack MSE not above no defense ({mse['none']:.5f}): {weaker}"
