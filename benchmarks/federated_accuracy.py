"""Does federated split learning learn? Test accuracy of each variant against N and partition.

Usage: ``python benchmarks/federated_accuracy.py [--clients 1 2 10 100] [--passes 10]
[--partitions iid dirichlet] [--variants splitfed-v2 splitfed-v1 vanilla]``

Every cell trains the main job's model (VGG11 split after conv 2, 8-channel bottleneck,
sigma = 0.025, batch 16) on the embedded digits for the same number of passes over the data as
the centralized reference (``--passes`` epochs centrally; ``passes / 2`` rounds of two local
epochs federated), lambda = 0, chunk 1, lockstep order. Federated cells run the in-process
protocol reference (``fl_cem/federated/reference.py``), which a slow test holds equal to the
Flower path; the simulation engine would need hours for N = 100 on two cores. Variants
(``federated.variant``, docs/FEDERATED.md): ``splitfed-v2`` (one decoder, encoders averaged
every local epoch, the default), ``splitfed-v1`` (a decoder copy per client, averaged with the
encoders), ``vanilla`` (each client keeps its encoder). ``dirichlet`` is label skew with
alpha = 0.5. ``epoch_seconds`` is in-process compute, not a Flower epoch time
(``benchmarks/federated_overhead.py`` measures that).

Prints a table and writes ``benchmarks/results/federated_accuracy.json`` and ``.png``
(accuracy against N, one line per variant and partition, the centralized accuracy dashed);
cells an earlier run at the same ``--passes`` measured and this one did not are kept, each
cell with the commit that measured it.

``--cifar10 sim_configs/cifar10_subset_cpu.toml`` instead trains that CIFAR-10 config centrally
and through Flower's simulation engine with 10 clients (its partition, CEM and defense as
written; one local epoch per round, so the passes match) and writes
``federated_accuracy_cifar10.json`` (``--cifar10-partitioner iid``: ``..._iid.json``).
``--cifar10-set federated.sync-every=1 federated.encoder-lr-scale=10`` changes the federated
run only (the linear scaling rule, docs/FEDERATED.md), ``--set cem.lambda=0`` both runs, and
``--label NAME`` appends ``_NAME`` to the file name, and ``--seeds 0 1 2`` repeats both runs per
seed (at five passes the centralized accuracy alone moves by 5 points between seeds); seeds an
earlier run of the same setting wrote to that file are kept, so ``--seeds 3 4`` adds two.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from statistics import mean, stdev
from tempfile import TemporaryDirectory

import torch

from fl_cem.config import Config
from fl_cem.config.flat import parse_override
from fl_cem.federated import client_logic
from fl_cem.federated.launch import run_federated
from fl_cem.federated.reference import run_reference
from fl_cem.reporting.run_dir import environment, git_commit
from fl_cem.training.centralized import train_centralized

RESULTS = Path(__file__).parent / "results"
V1_MAX_CLIENTS = 10
"""SplitFed V1 keeps N decoder copies; at N = 100 they need about 11 GB of this machine's 24."""


def cifar10(
    config: Path, clients: int, partitioner: str | None, federated_keys: dict[str, object], both_keys: dict[str, object], label: str | None, seeds: list[int]
) -> None:
    """Issue 12's CIFAR-10 floor: ``config`` centrally and through Flower's simulation with
    ``clients`` clients, the same passes over the data (one local epoch per round), once per
    seed (``run.seed``: initialisation, data order, partition); ``federated_keys``
    (``federated.*``) change the federated run only, ``both_keys`` both."""
    print(f"load average before: {os.getloadavg()}", flush=True)
    cells = _earlier_seeds(_cifar10_path(partitioner, label), config, clients, federated_keys, both_keys, seeds)
    for seed in seeds:
        with TemporaryDirectory() as tmp:
            overrides = {"run.output-dir": tmp, "run.device": "cpu", "run.seed": seed, **({"partition.partitioner": partitioner} if partitioner else {}), **both_keys}
            cfg = Config.load(config, overrides)
            passes = cfg.train.epochs
            tick = time.perf_counter()
            central = train_centralized(cfg.replace(**{"run.name": "central"}), log=lambda _: None)["final"]
            central_s = time.perf_counter() - tick
            print(f"seed {seed}: centralized, {passes} epochs: test accuracy {central['test_accuracy']:.3f} ({central_s:.0f} s)", flush=True)
            fed_cfg = cfg.replace(**{"run.name": "federated", "federated.rounds": passes, "federated.local-epochs": 1, **federated_keys})
            tick = time.perf_counter()
            federated = run_federated(fed_cfg, clients)["final"]
            federated_s = time.perf_counter() - tick
            print(f"seed {seed}: federated, {clients} clients, {passes} rounds: test accuracy {federated['test_accuracy_mean']:.3f} ({federated_s:.0f} s)", flush=True)
        cells.append({
            "seed": seed, "centralized_test_accuracy": central["test_accuracy"], "federated_test_accuracy_mean": federated["test_accuracy_mean"],
            "federated_local_test_accuracy_mean": federated["local_test_accuracy_mean"], "gap_to_centralized": central["test_accuracy"] - federated["test_accuracy_mean"],
            "centralized_seconds": central_s, "federated_seconds": federated_s, "commit": git_commit(), "load_average": os.getloadavg()[0],
        })
        _write_cifar10(config, clients, fed_cfg, passes, federated_keys, both_keys, cells, partitioner, label)


def _write_cifar10(
    config: Path, clients: int, fed_cfg: Config, passes: int, federated_keys: dict[str, object], both_keys: dict[str, object],
    cells: list[dict[str, object]], partitioner: str | None, label: str | None,
) -> None:
    """The seeds so far, their means and the gap's spread: written after every seed, so an
    interrupted benchmark keeps what it finished."""
    gaps = [float(cell["gap_to_centralized"]) for cell in cells]  # type: ignore[arg-type]
    out = {
        "config": str(config), "clients": clients, "passes": passes, "variant": fed_cfg.federated.variant,
        "partitioner": fed_cfg.partition.partitioner, "federated_keys": federated_keys, "keys": both_keys, "seeds": cells,
        "centralized_test_accuracy": mean(float(c["centralized_test_accuracy"]) for c in cells),  # type: ignore[arg-type]
        "federated_test_accuracy_mean": mean(float(c["federated_test_accuracy_mean"]) for c in cells),  # type: ignore[arg-type]
        "gap_to_centralized": mean(gaps), "gap_std": stdev(gaps) if len(gaps) > 1 else 0.0,
        "commit": git_commit(), "environment": environment(),
    }
    print(f"gap to centralized over {len(cells)} seeds: {out['gap_to_centralized']:.3f} +- {out['gap_std']:.3f}", flush=True)
    RESULTS.mkdir(exist_ok=True)
    _cifar10_path(partitioner, label).write_text(json.dumps(out, indent=2))


def _cifar10_path(partitioner: str | None, label: str | None) -> Path:
    suffix = (f"_{partitioner}" if partitioner else "") + (f"_{label}" if label else "")
    return RESULTS / f"federated_accuracy_cifar10{suffix}.json"


def _earlier_seeds(
    path: Path, config: Path, clients: int, federated_keys: dict[str, object], both_keys: dict[str, object], seeds: list[int]
) -> list[dict[str, object]]:
    """The seeds an earlier run of the same setting wrote to ``path`` and this one does not rerun,
    so seeds can be added a few at a time; each earlier seed keeps the commit that measured it
    (the file's, for seeds written before cells recorded their own)."""
    if not path.is_file():
        return []
    earlier = json.loads(path.read_text())
    setting = (str(config), clients, federated_keys, both_keys)
    if (earlier["config"], earlier["clients"], earlier["federated_keys"], earlier["keys"]) != setting:
        raise SystemExit(f"{path} holds another setting; pass --label to write elsewhere")
    return [{"commit": earlier["commit"], **cell} for cell in earlier["seeds"] if cell["seed"] not in seeds]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 2, 10, 100])
    parser.add_argument("--passes", type=int, default=10)
    parser.add_argument("--partitions", nargs="+", default=["iid", "dirichlet"])
    parser.add_argument("--variants", nargs="+", default=["splitfed-v2", "splitfed-v1", "vanilla"])
    parser.add_argument("--cifar10", type=Path, metavar="CONFIG", help="instead: this CIFAR-10 config centrally and with 10 clients")
    parser.add_argument("--cifar10-partitioner", help="with --cifar10: replace the config's partition.partitioner (writes ..._<name>.json)")
    parser.add_argument("--cifar10-set", nargs="*", default=[], metavar="KEY=VALUE", help="with --cifar10: federated.* keys of the federated run only")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", dest="both_set", help="with --cifar10: keys of both runs (e.g. cem.lambda=0)")
    parser.add_argument("--label", help="with --cifar10: suffix of the JSON file name (..._<label>.json)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="with --cifar10: one centralized and one federated run per seed")
    args = parser.parse_args()
    if args.passes % 2:
        parser.error("--passes must be even: federated cells run passes / 2 rounds of two local epochs")
    if args.cifar10:
        keys = dict(parse_override(item) for item in args.cifar10_set)
        if any(not key.startswith("federated.") for key in keys):
            parser.error("--cifar10-set takes federated.* keys only: the centralized reference must stay the same")
        both = dict(parse_override(item) for item in args.both_set)
        cifar10(args.cifar10, 10, args.cifar10_partitioner, keys, both, args.label, args.seeds)
        return
    torch.set_num_threads(1)
    print(f"load average before: {os.getloadavg()}", flush=True)
    cells = []
    with TemporaryDirectory() as tmp:
        base = {"run.output-dir": tmp, "run.device": "cpu", "attack.intercept": False}
        tick = time.perf_counter()
        central = train_centralized(Config.from_flat({**base, "run.name": "central", "train.epochs": args.passes}), log=lambda _: None)
        central_s = time.perf_counter() - tick
        reference = central["final"]["test_accuracy"]
        print(f"centralized, {args.passes} epochs: test accuracy {reference:.3f} ({central_s:.0f} s)", flush=True)
        for partition in args.partitions:
            for variant in args.variants:
                for n in args.clients:
                    client_logic._template.cache_clear()  # the previous cell's clients
                    if variant == "splitfed-v1" and n > V1_MAX_CLIENTS:
                        print(f"{partition:9s} {variant:11s} N={n:4d}: skipped (a decoder copy and its optimizer per client, "
                              f"about 110 MB each for this VGG11 decoder)", flush=True)
                        continue
                    cfg = Config.from_flat({
                        **base, "partition.partitioner": partition, "federated.variant": variant,
                        "federated.rounds": args.passes // 2, "federated.local-epochs": 2,
                    })
                    tick = time.perf_counter()
                    result = run_reference(cfg, n, log=lambda _: None)
                    seconds = time.perf_counter() - tick
                    last = result["rounds"][-1]["test"]
                    cell = {"partition": partition, "variant": variant, "clients": n, "test_accuracy_mean": last["accuracy_mean"],
                            "test_accuracy_min": last["accuracy_min"], "test_accuracy_max": last["accuracy_max"],
                            "gap_to_centralized": reference - last["accuracy_mean"], "seconds": seconds,
                            "epoch_seconds": seconds / args.passes, "commit": git_commit()}
                    cells.append(cell)
                    print(f"{partition:9s} {variant:11s} N={n:4d}: test acc {cell['test_accuracy_mean']:.3f} "
                          f"(min {cell['test_accuracy_min']:.3f}, gap {cell['gap_to_centralized']:+.3f}) {seconds:.0f} s", flush=True)
    path = RESULTS / "federated_accuracy.json"
    out = {"passes": args.passes, "centralized_test_accuracy": reference, "centralized_epoch_seconds": central_s / args.passes,
           "cells": merged(path, args.passes, cells), "commit": git_commit(), "environment": environment()}
    RESULTS.mkdir(exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    plot(out, RESULTS / "federated_accuracy.png")


def merged(path: Path, passes: int, cells: list[dict]) -> list[dict]:
    """``cells`` plus the cells of an earlier run at the same passes that this run did not
    repeat, so ``--variants vanilla`` re-measures those rows without dropping the others."""
    earlier = json.loads(path.read_text()) if path.exists() else {"passes": None}
    if earlier["passes"] != passes:
        return cells
    fresh = {_cell_key(cell) for cell in cells}
    return sorted([cell for cell in earlier["cells"] if _cell_key(cell) not in fresh] + cells, key=_cell_key)


def _cell_key(cell: dict) -> tuple[str, str, int]:
    return cell["partition"], cell["variant"], cell["clients"]


def plot(out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for partition in sorted({c["partition"] for c in out["cells"]}):
        for variant in sorted({c["variant"] for c in out["cells"]}):
            rows = [c for c in out["cells"] if c["partition"] == partition and c["variant"] == variant]
            ax.plot([c["clients"] for c in rows], [c["test_accuracy_mean"] for c in rows], marker="o", label=f"{variant}, {partition}")
    ax.axhline(out["centralized_test_accuracy"], linestyle="--", color="gray", label="centralized")
    ax.set_xscale("log")
    ax.set_xlabel("clients N")
    ax.set_ylabel(f"test accuracy after {out['passes']} passes")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
