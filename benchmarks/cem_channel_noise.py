"""Gaussian noise on the CEM uploads: what it costs the ``cem_stats`` attack, the accuracy and the CEM bound.

Usage: ``python benchmarks/cem_channel_noise.py [--noise 0 0.1 1 4] [--clip 25] [--seed 0]``

The setting of ``tests/test_cem_channel.py`` and of README's channel table: digits, 1,000
training images, 3 IID clients, SplitFed V2, 2 rounds, ``cem.lambda = 0.01``, 2 clusters per
class, ``cem.federation = global``; then ``fl-cem attack --attack cem_stats`` (train mode, 8
decoder epochs on the other clients' images) on client 0's last upload, twice: as configured
(32 draws from each uploaded cluster Gaussian) and decoding the cluster means alone
(``attack.stats-samples = 0``), the better choice for an attacker who knows the covariances are
noise. The clip's default, 25, is about twice the root-mean-square residual of the round-2 clear
upload (11.5; round 1: 2.1, the features' norm grows from about 5 to 21 in the first round):
a clip of 3, fitted to the untrained features, biased every round-2 mean so far towards the
old centres that the attack failed without noise. One run per noise
multiplier z (``cem.stats-noise``); z = 0 runs twice, without clipping (today's protocol,
``cem.stats-clip = 0``) and with ``--clip`` alone (the bounded protocol's cost without noise).
Reports per run: the prototype MSE against each class's mean image over client 0's data, with
the two baselines without the channel (the attacker's global mean image and its own class
means) and the same decoding of the merged sum; the final mean test accuracy; the merged
mixture's ``H(x|z)`` bound (``global_hxz_relative = -L_C``, Theorem 1's MSE lower bound and
empty clusters: what the run reports) and the clients' own mean; and the per-refit and per-run epsilon at delta = 1e-5 (results.json ``cem_privacy``).

Writes ``benchmarks/results/cem_channel_noise.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from fl_cem.attacks.run import attack_run
from fl_cem.config import Config
from fl_cem.federated.launch import run_federated
from fl_cem.reporting.run_dir import environment, git_commit

RESULTS = Path(__file__).parent / "results"
SETTING = {
    "data.source": "digits",
    "model.arch": "resnet20",
    "model.cut": 1,
    "data.train-subset": 1000,
    "data.test-subset": 100,
    "train.batch-size": 32,
    "train.eval-batch-size": 256,
    "train.lr": 0.02,
    "federated.rounds": 2,
    "federated.local-epochs": 1,
    "partition.num-partitions": 3,
    "cem.lambda": 0.01,
    "cem.clusters-per-class": 2,
    "cem.federation": "global",
    "run.device": "cpu",
}
"""``tests/test_cem_channel.py``'s ``TINY`` + ``CHANNEL``."""


def cell(tmp: str, noise: float, clip: float, seed: int) -> dict[str, Any]:
    """One federated run and the attack on client 0's last upload."""
    name = f"z{noise:g}_c{clip:g}"
    cfg = Config.from_flat({**SETTING, "run.output-dir": tmp, "run.name": name, "run.seed": seed, "cem.stats-noise": noise, "cem.stats-clip": clip})
    tick = time.perf_counter()
    results = run_federated(cfg)
    train_s = time.perf_counter() - tick
    tick = time.perf_counter()
    [outcome] = attack_run(str(Path(tmp) / name), "cem_stats", "train", 0, {"attack.epochs": 8}, log=lambda _: None)
    # an attacker who knows the covariances are noise decodes the cluster means alone
    [means_only] = attack_run(str(Path(tmp) / name), "cem_stats", "train", 0, {"attack.epochs": 8, "attack.stats-samples": 0}, log=lambda _: None)
    cem = results["final"]["cem"]
    metrics, aggregate = outcome["metrics"], outcome["aggregate"]
    return {
        "stats_noise": noise,
        "stats_clip": clip,
        "seed": seed,
        "prototype_mse": metrics["mse"],
        "mean_image_mse": metrics["mse_mean_guess"],
        "class_means_mse": metrics["mse_class_mean_guess"],
        "failed": outcome["failed"],
        "beats_class_means": outcome["beats_class_means"],
        "merged_prototype_mse": aggregate["mse"],
        "means_only_prototype_mse": means_only["metrics"]["mse"],
        "means_only_failed": means_only["failed"],
        "means_only_merged_prototype_mse": means_only["aggregate"]["mse"],
        "test_accuracy": results["final"]["test_accuracy_mean"],
        "global_hxz_relative": cem.get("global_hxz_relative"),
        "global_mse_lower_bound": cem.get("global_mse_lower_bound"),
        "global_clusters_empty": cem.get("global_clusters_empty"),
        "mean_hxz_relative": cem.get("mean_hxz_relative"),
        "cem_privacy": results["cem_privacy"],
        "train_s": train_s,
        "attack_s": time.perf_counter() - tick,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.1, 1.0, 4.0], help="noise multipliers z")
    parser.add_argument("--clip", type=float, default=25.0, help="cem.stats-clip C for every z > 0 (and once with z = 0)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()}", flush=True)
    plan = [(z, args.clip if z > 0 else 0.0) for z in args.noise]
    if 0.0 in args.noise:
        plan.insert(1, (0.0, args.clip))
    cells = []
    with TemporaryDirectory() as tmp:
        for noise, clip in plan:
            row = cell(tmp, noise, clip, args.seed)
            cells.append(row)
            privacy = row["cem_privacy"]
            epsilon = "-" if privacy["epsilon_refit"] is None else f"{privacy['epsilon_refit']:.2f} per refit, {privacy['epsilon_run']:.2f} per run"
            print(
                f"z {noise:g} C {clip:g}: prototype MSE {row['prototype_mse']:.5f} (mean image {row['mean_image_mse']:.4f}, "
                f"class means {row['class_means_mse']:.5f}{', failed' if row['failed'] else ''}), merged {row['merged_prototype_mse']:.5f}; means only {row['means_only_prototype_mse']:.5f}, merged {row['means_only_merged_prototype_mse']:.5f} | "
                f"test acc {row['test_accuracy']:.3f} | global H(x|z) rel {row['global_hxz_relative']:.2f}, MSE bound {row['global_mse_lower_bound']:.2e} | epsilon {epsilon} | "
                f"{row['train_s']:.0f} s + {row['attack_s']:.0f} s",
                flush=True,
            )
    out = {
        "setting": SETTING,
        "attack": {"attack": "cem_stats", "mode": "train", "victim": 0, "attack.epochs": 8},
        "seeds": 1,
        "cells": cells,
        "commit": git_commit(),
        "environment": environment(),
        "load_average_after": os.getloadavg(),
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "cem_channel_noise.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
