"""The sweeps of the paper's other tables (CIFAR-100, TinyImageNet, FaceScrub, Fig. 4c) train on
small generated ImageFolder trees: the real data cannot be fetched here."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from fl_cem.config import Config
from fl_cem.data import load_source, load_splits
from fl_cem.experiments.spec import load_sweep
from fl_cem.training.centralized import train_centralized

SWEEPS = Path(__file__).resolve().parents[1] / "sim_configs" / "sweeps"


def image_tree(root: Path, size: int, classes: int = 3) -> Path:
    """``train/`` and ``test/`` class folders of random RGB images, ``size`` x ``size``."""
    gen = torch.Generator().manual_seed(0)
    for split, count in (("train", 8), ("test", 2)):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = (torch.rand(size, size, 3, generator=gen) * 255).to(torch.uint8).numpy()
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


@pytest.mark.parametrize(
    ("sweep", "size", "cell"),
    [
        ("paper_cifar100", 32, "centralized__noise_arl_on_seed0"),
        ("paper_tinyimagenet", 64, "centralized__noise_nopeek_on_seed0"),
        ("paper_facescrub", 64, "centralized__patrol_on_seed0"),
        ("paper_fig4c_cuts", 32, "centralized__cut3_sigma0.1_on"),
        ("cpu_table1", 32, "centralized__patrol_on"),
    ],
)
def test_paper_sweep_cell_trains_on_a_generated_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sweep: str, size: int, cell: str) -> None:
    # Prepare: the sweep's own cell, on a generated tree, two epochs (the official CEM acts from epoch 2)
    monkeypatch.setenv("FL_CEM_DATA", str(tmp_path / "cache"))
    load_source.cache_clear()
    load_splits.cache_clear()
    cells = {c.name: c for c in load_sweep(SWEEPS / f"{sweep}.toml").cells()}
    small = {
        "data.source": "imagefolder", "data.root": str(image_tree(tmp_path / "tree", size)), "data.val-fraction": 0.125,
        "data.train-subset": 0, "data.test-subset": 0,
        "train.epochs": 2, "train.batch-size": 8, "cem.clusters-per-class": 1, "run.output-dir": str(tmp_path / "runs"), "run.name": cell,
        "run.device": "cpu", "defense.adversary-warmup": 0, "defense.prune-step": 1,
    }
    cfg = Config.from_flat({**cells[cell].overrides, **small})
    # Execute
    results = train_centralized(cfg, log=lambda _: None)
    # Assert: it trained with the sweep's model, CEM and defense, and CEM acted
    assert results["status"] == "finished" and len(results["epochs"]) == 2
    assert results["epochs"][-1]["cem_loss"] > 0
    assert cfg.data.image_size in (0, size) and cfg.model.sigmoid
    load_source.cache_clear()
    load_splits.cache_clear()
