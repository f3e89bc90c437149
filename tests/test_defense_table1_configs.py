"""The run configs of the paper's Table 1 rows load and carry the paper's CIFAR-10 setting."""

from pathlib import Path

import pytest

from fl_cem.config import Config

TABLE1 = Path(__file__).resolve().parents[1] / "sim_configs" / "table1"
ROWS = ["no_defense"] + [
    f"{defense}{suffix}"
    for defense in ("bottleneck", "distcorr", "dropout", "patrol", "ressfl", "noise_nopeek", "noise_arl")
    for suffix in ("", "_cem")
]


def test_one_file_per_table1_row() -> None:
    # Execute
    stems = sorted(p.stem for p in TABLE1.glob("*.toml"))

    # Assert: No_defense and 14 rows
    assert stems == sorted(ROWS) and len(stems) == 15


@pytest.mark.parametrize("row", ROWS)
def test_table1_config_loads_with_paper_setting(row: str) -> None:
    # Execute
    cfg = Config.load(TABLE1 / f"{row}.toml")

    # Assert
    undefended = row == "no_defense"
    assert (cfg.data.source, cfg.model.arch, cfg.model.cut) == ("cifar10", "vgg11", 2)
    assert (cfg.train.epochs, cfg.train.lr, cfg.train.batch_size) == (240, 0.05, 128)
    assert cfg.model.bottleneck == (0 if undefended else 8)
    assert cfg.noise.sigma == (0.0 if undefended else 0.025)
    assert cfg.cem.lam == (16.0 if row.endswith("_cem") else 0.0)
    assert cfg.cem.clusters_per_class == 3
    assert cfg.defense.name == ("none" if undefended else row.removesuffix("_cem"))
    assert cfg.run.name == f"table1_{row}"
