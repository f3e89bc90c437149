"""Where a CIFAR-10 run stalls: the decoder's loss and dL/dz step by step, centrally and federated.

Usage: ``python benchmarks/first_epoch_trace.py --seed 6 [--set train.warmup-epochs=2]``

Trains ``sim_configs/cifar10_subset_cpu.toml`` with its partition IID and CEM off (the
in-process reference trains no CEM) twice on one thread: centrally for its five epochs, and
with ten SplitFed V2 clients through the in-process protocol reference
(``fl_cem/federated/reference.py``, which the slow tests hold equal to the Flower path) for
five rounds of one local epoch. Every decoder step of both goes through ``Server.step``; a
wrapper around it records the step's loss and the norm of the gradient it returns to the
encoder. Printed and written per tenth of a pass: the first pass shows whether the loss climbs
above ln 10 during the warm-up, and the later ones how fast the encoder gets a usable gradient
again (docs/FEDERATED.md, "The first pass").

Writes ``benchmarks/results/first_epoch_trace_seed<S>[_<label>].json``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any, Callable

import torch

from fl_cem.config import Config
from fl_cem.config.flat import parse_override
from fl_cem.federated.reference import run_reference
from fl_cem.reporting.run_dir import environment, git_commit
from fl_cem.training.centralized import train_centralized
from fl_cem.training.server import Server

CONFIG = Path(__file__).parent.parent / "sim_configs" / "cifar10_subset_cpu.toml"
RESULTS = Path(__file__).parent / "results"
CLIENTS = 10
SLICES = 10
"""Slices of a pass the trace is averaged over."""


def traced(run: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], list[tuple[int, float, float]]]:
    """``run()`` with every decoder step's (epoch, loss, |dL/dz|) recorded."""
    steps: list[tuple[int, float, float]] = []
    original = Server.step

    def step(self: Server, z: torch.Tensor, y: torch.Tensor, at: Any, source: Any = None) -> Any:
        grad, metrics = original(self, z, y, at, source)
        steps.append((at.epoch, float(metrics["loss"]), float(grad.norm())))
        return grad, metrics

    Server.step = step  # type: ignore[method-assign]
    try:
        return run(), steps
    finally:
        Server.step = original  # type: ignore[method-assign]


def per_slice(steps: list[tuple[int, float, float]]) -> list[dict[str, Any]]:
    """Mean loss and |dL/dz| over each tenth of each pass."""
    passes = []
    for epoch in sorted({s[0] for s in steps}):
        rows = [s for s in steps if s[0] == epoch]
        bounds = [round(i * len(rows) / SLICES) for i in range(SLICES + 1)]
        slices = [rows[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]
        passes.append({
            "pass": epoch + 1, "steps": len(rows),
            "loss": [sum(r[1] for r in s) / len(s) for s in slices],
            "grad_norm": [sum(r[2] for r in s) / len(s) for s in slices],
        })
    return passes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=6)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="keys of both runs, e.g. train.warmup-epochs=2")
    parser.add_argument("--label", help="suffix of the JSON file name (default: none)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    keys = dict(parse_override(item) for item in args.set)
    out: dict[str, Any] = {"config": str(CONFIG.name), "seed": args.seed, "keys": keys, "clients": CLIENTS, "ln_classes": math.log(10)}
    with TemporaryDirectory() as tmp:
        cfg = Config.load(CONFIG, {"run.output-dir": tmp, "run.device": "cpu", "run.seed": args.seed, "partition.partitioner": "iid", "cem.lambda": 0.0, **keys})
        fed_cfg = cfg.replace(**{"run.name": "federated", "federated.rounds": cfg.train.epochs, "federated.local-epochs": 1})
        runs: dict[str, Callable[[], dict[str, Any]]] = {
            "centralized": lambda: train_centralized(cfg.replace(**{"run.name": "central"}), log=lambda _: None),
            "federated": lambda: run_reference(fed_cfg, CLIENTS, log=lambda _: None),
        }
        for name, run in runs.items():
            tick = time.perf_counter()
            result, steps = traced(run)
            accuracy = [h["test"]["accuracy"] for h in result["epochs"]] if name == "centralized" else [r["test"]["accuracy_mean"] for r in result["rounds"]]
            out[name] = {"test_accuracy_per_pass": accuracy, "passes": per_slice(steps), "seconds": time.perf_counter() - tick}
            print(f"{name}: test accuracy per pass {' '.join(f'{a:.3f}' for a in accuracy)}", flush=True)
            for row in out[name]["passes"]:
                print(f"  pass {row['pass']}: loss {' '.join(f'{v:.2f}' for v in row['loss'])} | dL/dz {' '.join(f'{v:.3f}' for v in row['grad_norm'])}", flush=True)
    out |= {"commit": git_commit(), "environment": environment()}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"first_epoch_trace_seed{args.seed}{'_' + args.label if args.label else ''}.json"
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
