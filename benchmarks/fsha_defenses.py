"""Feature-space hijacking against defenses: the malicious server's inversion and the clients' alarm.

Usage: ``python benchmarks/fsha_defenses.py [--workload digits|cifar10] [--rounds 8] [--seed 0] [--cells ...] [--servers none fsha]
[--set KEY=VALUE ...] [--label NAME]``

The ``digits`` workload (default) is the protocol of README's FSHA figures: the embedded digits (all 1,294 training images, one
client, one local epoch a round, the 359 test images as the server's public data), ResNet-20
cut after block 1, batch 32, SGD 0.02, the ``malicious.*`` defaults, one seed. Every cell runs
twice through the real ServerApp and ClientApp (Flower's simulation engine, in this process):
under an honest server and under ``malicious.attack = fsha``. The in-process reference
(``fl_cem/federated/reference.py``) cannot run the CEM cell (it does not train CEM), so every
cell takes the Flower path, which ``tests/test_fsha.py`` holds equal to the reference.

Cells (the defense rows of ``sim_configs/sweeps/cpu_table1.toml``, on this model):

- ``no_defense``: no bottleneck, no sigmoid, no noise (``defense.name = none``);
- ``bottleneck``: the 8-channel bottleneck with its sigmoid and noise sigma 0.025
  (``defense.name = bottleneck``);
- ``bottleneck_cem``: the same with CEM, ``cem.lambda = 16``, ``cem.variant = official``
  (``sim_configs/table1/bottleneck_cem.toml``); the global mixture, 2 clusters per class
  (the tests' config) and the first refit after round 1, so CEM acts from round 2 on;
- ``readme_defaults``: the config README's first FSHA table was measured with (the project's
  defaults: 8-channel bottleneck, no sigmoid, sigma 0.025, ``defense.name = none``), to tie the
  new rows to that table.

The ``cifar10`` workload is the same question at ``sim_configs/sweeps/cpu_table1.toml``'s
scale, the CPU-scale protocol of README's Table 1, cut to one client: the paper's encoder
(VGG11-BN cut after conv 2) and the half-width decoder, 5,000 images of the shared CIFAR-10
tarball (4,500 after the validation split), 2,000 test images (the server's public data), batch
128, SGD 0.05 with a one-epoch warm-up and cosine decay, 5 clusters a class, the first three
cells (``readme_defaults`` is the digits table's config). Results go to
``benchmarks/results/fsha_defenses_cifar10.json``.

Per round: the server's inversion MSE of the round's last 256 rows and its ratio to the mean
image's, the clients' gradient-norm CV and alarm, and test accuracy. Prints a table and writes
the workload's JSON after every run; run again with the same protocol, it skips the runs that
JSON holds (an interrupted benchmark resumes; delete the file to measure again).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import torch

# The script is run as a file from the repository root; make `fl_cem` importable without an install too.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fl_cem.config import Config  # noqa: E402
from fl_cem.config.flat import parse_override  # noqa: E402
from fl_cem.federated.launch import run_federated  # noqa: E402
from fl_cem.reporting.run_dir import environment, git_commit  # noqa: E402

RESULTS = Path(__file__).parent / "results"
CIFAR_TARBALL = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"

WORKLOADS: dict[str, dict[str, Any]] = {
    # tests/conftest.py's TINY on all of digits, as tests/test_fsha.py's DIGITS and README's table
    "digits": {
        "data.source": "digits",
        "data.train-subset": 0,
        "data.test-subset": 0,
        "model.arch": "resnet20",
        "model.cut": 1,
        "train.batch-size": 32,
        "train.eval-batch-size": 256,
        "train.lr": 0.02,
        "federated.local-epochs": 1,
        "cem.clusters-per-class": 2,
    },
    # cpu_table1.toml's [base] at one client and a quarter of its images
    "cifar10": {
        "data.source": "imagefolder",
        "data.train-subset": 5000,
        "data.test-subset": 2000,
        "model.arch": "vgg11",
        "model.cut": 2,
        "model.decoder-width": 0.5,
        "train.batch-size": 128,
        "train.lr": 0.05,
        "train.schedule": "cosine",
        "train.warmup-epochs": 1.0,
        "federated.local-epochs": 1,
        "cem.clusters-per-class": 5,
    },
}
"""Each workload's keys under every cell."""

CELLS: dict[str, dict[str, Any]] = {
    "no_defense": {"defense.name": "none", "model.bottleneck": 0, "model.sigmoid": False, "noise.sigma": 0.0},
    "bottleneck": {"defense.name": "bottleneck", "model.bottleneck": 8, "model.sigmoid": True, "noise.sigma": 0.025},
    "bottleneck_cem": {
        "defense.name": "bottleneck", "model.bottleneck": 8, "model.sigmoid": True, "noise.sigma": 0.025,
        "cem.lambda": 16.0, "cem.variant": "official",
    },
    "readme_defaults": {},
}


def per_round(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The figures this benchmark reports, one dict per round."""
    rows = []
    for r in results["rounds"]:
        hijack, client = r["hijack"], r["client"]
        rows.append({
            "round": r["round"],
            "inversion_mse": hijack.get("inversion_mse"),
            "mean_image_mse": hijack.get("mean_image_mse"),
            "mse_to_mean_image": hijack.get("mse_to_mean_image"),
            "failed": hijack.get("failed"),
            "critic_distance": hijack.get("critic_distance"),
            "autoencoder_mse": hijack.get("autoencoder_mse"),
            "gradient_norm_cv": client.get("gradient_norm_cv"),
            "hijack_alarm": client.get("hijack_alarm"),
            "test_accuracy": r["test"].get("accuracy_mean"),
            "train_loss": r["train_loss"],
            **({"global_hxz_relative": r["cem"]["global_hxz_relative"]} if "global_hxz_relative" in r["cem"] else {}),
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="digits", choices=list(WORKLOADS))
    parser.add_argument("--cifar-root", default=str(CIFAR_TARBALL), help="CIFAR-10 image folder or tarball (cifar10 workload)")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more keys under every cell, e.g. malicious.gradient-scale=0.04")
    parser.add_argument("--label", default="", help="suffix of the JSON's name, to keep a variant's results apart")
    parser.add_argument("--servers", nargs="+", default=["none", "fsha"], choices=["none", "fsha"], help="honest (none) and/or malicious runs of each cell")
    parser.add_argument("--cells", nargs="+", choices=list(CELLS), help="default: all (digits), all but readme_defaults (cifar10)")
    args = parser.parse_args()
    protocol = dict(WORKLOADS[args.workload])
    if args.workload == "cifar10":
        protocol["data.root"] = args.cifar_root
    protocol.update(parse_override(item) for item in args.set)
    cells = args.cells or [c for c in CELLS if args.workload == "digits" or c != "readme_defaults"]
    name = "fsha_defenses" + ("" if args.workload == "digits" else f"_{args.workload}") + (f"_{args.label}" if args.label else "")
    results_path = RESULTS / f"{name}.json"
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    out: dict[str, Any] = {
        "description": f"FSHA (malicious.attack = fsha) and an honest server against defenses, {args.workload}, 1 client, Flower simulation; one seed",
        "protocol": {**protocol, "federated.rounds": args.rounds, "run.seed": args.seed},
        "cells": [],
        "commit": git_commit(),
        "environment": environment(),
    }
    if results_path.exists():
        earlier = json.loads(results_path.read_text())
        if earlier.get("protocol") == out["protocol"]:
            # the same protocol: keep its finished runs, so an interrupted benchmark resumes
            out["cells"] = earlier["cells"]
    finished = {(c["cell"], c["attack"]) for c in out["cells"]}
    with TemporaryDirectory() as tmp:
        for label in cells:
            for attack in args.servers:
                if (label, attack) in finished:
                    print(f"{label} / {attack}: in {results_path.name} already, skipped", flush=True)
                    continue
                keys = {**protocol, **CELLS[label], "federated.rounds": args.rounds, "run.seed": args.seed, "malicious.attack": attack}
                cfg = Config.from_flat({**keys, "run.output-dir": tmp, "run.name": f"{label}-{attack}"})
                tick = time.perf_counter()
                results = run_federated(cfg, num_clients=1)
                seconds = time.perf_counter() - tick
                rows = per_round(results)
                out["cells"].append({"cell": label, "attack": attack, "keys": CELLS[label], "seconds": seconds, "rounds": rows})
                print(f"{label} / {attack} ({seconds:.0f} s, Flower simulation included)", flush=True)
                for row in rows:
                    inversion = f"MSE {row['inversion_mse']:.4f} = {row['mse_to_mean_image']:.2f} of mean image | " if attack == "fsha" else ""
                    print(f"  round {row['round']}: {inversion}CV {row['gradient_norm_cv']:.3f} alarm {row['hijack_alarm']:.0f} | "
                          f"test acc {row['test_accuracy']:.3f}", flush=True)
                results_path.parent.mkdir(exist_ok=True)
                results_path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"written {results_path}")


if __name__ == "__main__":
    main()
