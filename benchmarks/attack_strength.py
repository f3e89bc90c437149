"""Which decoder attack leaks most? Architectures and optimiser schedules at the same budget.

Usage: ``python benchmarks/attack_strength.py [--config sim_configs/cifar10_subset_cpu.toml]
[--epochs 10] [--run-epochs 5] [--cem-lambda 16 0]``

Trains the victim once per ``--cem-lambda`` (the config centrally, its defense and CEM as
written, ``--run-epochs`` epochs), then attacks it with ``fl-cem attack --attack decoder
--mode train`` in every combination of ``attack.network`` (``s9``: the paper's S.9 network;
``hires``: upsampling first, residual blocks at image resolution) and optimiser (``paper``:
Adam 0.005 constant, S.9; ``authors``: Adam 1e-3, weight decay 1e-4, cosine to 1e-5, the CEM
authors' code), each for ``--epochs`` epochs on the same aux images and targets, with the
attacker's 10 % validation share picking its best epoch. Reports MSE, the mean-image MSE of the
targets, their ratio (lower leaks more) and seconds; the strongest combination should be the
default (``fl_cem/config/attack.py`` ``AttackConfig``).

Writes ``benchmarks/results/attack_strength.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from tempfile import TemporaryDirectory

from fl_cem.attacks.run import attack_run
from fl_cem.config import Config
from fl_cem.reporting.run_dir import environment, git_commit
from fl_cem.training.centralized import train_centralized

RESULTS = Path(__file__).parent / "results"
OPTIMISERS = {
    "paper": {"attack.lr": 0.005, "attack.weight-decay": 0.0, "attack.schedule": "constant"},
    "authors": {"attack.lr": 0.001, "attack.weight-decay": 0.0001, "attack.schedule": "cosine"},
}
NETWORKS = ("s9", "hires")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("sim_configs/cifar10_subset_cpu.toml"))
    parser.add_argument("--epochs", type=int, default=10, help="attack epochs of every combination")
    parser.add_argument("--run-epochs", type=int, default=5, help="training epochs of the victim")
    parser.add_argument("--cem-lambda", type=float, nargs="+", default=[16.0, 0.0])
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()}", flush=True)
    cells = []
    with TemporaryDirectory() as tmp:
        for lam in args.cem_lambda:
            cfg = Config.load(args.config, {"run.output-dir": tmp, "run.device": "cpu", "run.name": f"victim_lambda{lam:g}", "train.epochs": args.run_epochs, "cem.lambda": lam})
            tick = time.perf_counter()
            final = train_centralized(cfg, log=lambda _: None)["final"]
            print(f"victim lambda {lam:g}: test accuracy {final['test_accuracy']:.3f} ({time.perf_counter() - tick:.0f} s)", flush=True)
            run_path = str(Path(tmp) / cfg.run.name)
            for network in NETWORKS:
                for optimiser, keys in OPTIMISERS.items():
                    overrides = {**keys, "attack.network": network, "attack.epochs": args.epochs}
                    tick = time.perf_counter()
                    outcome = attack_run(run_path, "decoder", "train", None, overrides, log=print)[0]
                    seconds = time.perf_counter() - tick
                    metrics = outcome["metrics"]
                    cell = {
                        "cem_lambda": lam, "victim_test_accuracy": final["test_accuracy"], "network": network, "optimiser": optimiser,
                        "mse": metrics["mse"], "mse_mean_image": metrics["mse_mean_guess"], "ratio_to_mean_image": metrics["mse"] / metrics["mse_mean_guess"],
                        "best_epoch": outcome["fit"].get("best_epoch"), "failed": outcome["failed"], "seconds": seconds,
                        "aux": outcome["aux"], "targets": outcome["targets"],
                    }
                    cells.append(cell)
                    print(f"lambda {lam:g} {network:5s} {optimiser:7s}: MSE {cell['mse']:.4f} / mean image {cell['mse_mean_image']:.4f} "
                          f"= {cell['ratio_to_mean_image']:.3f} (best epoch {cell['best_epoch']}) {seconds:.0f} s", flush=True)
    out = {"config": str(args.config), "attack_epochs": args.epochs, "victim_epochs": args.run_epochs, "cells": cells,
           "commit": git_commit(), "environment": environment()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "attack_strength.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
