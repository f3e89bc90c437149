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
    assert (cfg.cem.clusters_per_class, cfg.cem.kmeans_iters) == (5, 50)
    assert cfg.model.sigmoid is not undefended
    assert (cfg.train.schedule, cfg.train.warmup_epochs) == ("multistep", 1.0)
    assert cfg.defense.name == ("none" if undefended else row.removesuffix("_cem"))
    assert cfg.run.name == f"table1_{row}"


STRENGTHS = ("distcorr-weight", "adversary-weight", "dropout", "ssim-threshold", "laplace-scale", "adversary-warmup", "prune-step")


@pytest.mark.parametrize("row", ROWS)
def test_every_defense_strength_says_where_it_comes_from(row: str) -> None:
    # Prepare
    lines = (TABLE1 / f"{row}.toml").read_text().splitlines()
    # Assert: the comment block above each strength cites a file and line, or says it is ours
    for i, line in enumerate(lines):
        if line.split("=")[0].strip() in STRENGTHS:
            above = i
            while above > 0 and lines[above - 1].startswith("#"):
                above -= 1
            comment = " ".join(lines[above:i])
            assert "line" in comment or "our choice" in comment, (row, line)


@pytest.mark.parametrize(("first", "second"), [("distcorr", "noise_nopeek"), ("arl", "noise_arl")])
def test_distinct_rows_send_distinct_smashed_data_from_the_same_seed(first: str, second: str) -> None:
    # Prepare: the same model, data, seed and strengths; only the defense's name differs
    import torch

    from fl_cem.training.schedule import Position
    from fl_cem.training.setup import build_client, build_model, build_server
    from fl_cem.training.step import train_step

    x, y = torch.rand(32, 1, 8, 8), torch.arange(32) % 10
    sent = []
    for name in (first, second):
        cfg = Config.from_flat({"defense.name": name, "noise.sigma": 0.1, "defense.distcorr-weight": 0.3, "defense.adversary-weight": 0.3, "model.arch": "resnet20", "model.cut": 1})
        model = build_model(cfg, (1, 8, 8), 10, (0.5,), (0.25,))
        client = build_client(cfg, model, 10, 32, torch.device("cpu"))
        server = build_server(cfg, model, torch.device("cpu"))
        # Execute: three training steps, then smash a batch
        for step in range(3):
            train_step(client, server, x, y, step, Position(0))
        with client.deployed():
            sent.append(client.smash(x, seed=99))
    # Assert
    assert not torch.allclose(sent[0], sent[1])
