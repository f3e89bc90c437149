"""What federating costs: epoch wall time federated (N = 1, N = 10) over centralized, message
round trips, where the time goes, and peak memory of all processes at N = 10 and N = 100.

Usage: ``python benchmarks/federated_overhead.py [--workload digits|cifar10] [--clients 1 10]
[--memory-clients 10 100] [--also federated.server-mix=true]``

All in one process, side by side, on the same data and model: VGG11 split after conv 2 with the
bottleneck, lambda = 0, three epochs (federated: three rounds of one local epoch; ``lockstep``
order, chunk 1, i.e. exact split learning with one message per batch), on one of two workloads:

- ``digits`` (default): the embedded 8x8 digits, whole training split, batch 16. A batch is
  30-45 ms of compute, no more than a message costs, so this is the worst case for federating:
  it measures the cost of a message more than the cost of splitting the model.
- ``cifar10``: the paper's setting, 32x32 CIFAR-10 at batch 128, on a 5,120-image subset of
  ``--cifar-root`` (default: the shared JPEG tarball next to the project).

The training split is divided among the clients. The federated time is a
round's training phase measured by the server (Ray start-up, node discovery and evaluation
excluded, as they are not part of an epoch's training); the centralized time is the epoch's
training loop. One client evaluates after each round (``federated.fraction-evaluate = 1 / N``):
evaluation is not part of the epoch, and at N = 100 every client smashing the test split took
longer than the round's training. Each figure is the median of the three, which keeps the first epoch's warm-up
and a busy moment of the machine out of the ratio. Everything is measured twice, with this
process (centralized trainer, federated server) on one thread and on every core: the second
is how ``flwr run`` runs the server, and the fair reference for a federation whose clients
also compute on those cores. Peak memory is
the largest sum of resident set sizes of this process and every Ray process, sampled every
0.2 s. ``--also KEY=VALUE ...`` runs every federated cell a second time with those keys, side
by side (``federated_<N>_also``): what an option such as ``federated.server-mix`` costs.
``--threads all_cores`` measures only the second setting, the one the targets compare with.
The centralized epoch is measured again after the federated cells (``centralized_epoch_s_after``,
each cell's ``ratio_to_centralized_after``): on the shared machine the reference itself drifts
by up to a fifth between runs (21.2-25.6 s on 2026-12-07), and the two ratios show how far. The JSON is rewritten after every
cell, so an interrupted run keeps what it measured.
Prints and writes ``benchmarks/results/federated_overhead[_cifar10].json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import torch

from fl_cem.config import Config
from fl_cem.config.flat import parse_override
from fl_cem.federated.launch import run_federated
from fl_cem.reporting.run_dir import atomic_write_bytes, environment
from fl_cem.training.centralized import train_centralized

RESULTS = Path(__file__).parent / "results"
REPEATS = 3
BASE = {"train.epochs": REPEATS, "federated.rounds": REPEATS, "federated.local-epochs": 1, "cem.lambda": 0.0, "run.device": "cpu"}
CIFAR_TARBALL = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"
WORKLOADS = {
    "digits": {"train.batch-size": 16},
    "cifar10": {
        "data.source": "imagefolder", "data.train-subset": 5120, "data.test-subset": 1000,
        "model.arch": "vgg11", "model.cut": 2, "model.bottleneck": 8, "train.batch-size": 128,
    },
}


def total_rss_mib() -> float:
    """Resident memory of this process and every Ray process (workers, actors, raylet, GCS)."""
    total = 0
    mine = str(Path("/proc/self").resolve().name)
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            if proc.name != mine and b"ray" not in cmdline:
                continue
            for line in (proc / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


class PeakMemory:
    """Samples :func:`total_rss_mib` in a thread while the block runs."""

    def __enter__(self) -> "PeakMemory":
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, total_rss_mib())
            time.sleep(0.2)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def centralized_epoch_s(tmp: str, name: str) -> float:
    """Median epoch time of centralized training of :data:`BASE` on this process's threads."""
    cfg = Config.from_flat({**BASE, "run.output-dir": tmp, "run.name": name})
    return statistics.median(e["train_time_s"] for e in train_centralized(cfg, log=lambda _: None)["epochs"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="digits", choices=sorted(WORKLOADS))
    parser.add_argument("--cifar-root", default=str(CIFAR_TARBALL), help="CIFAR-10 image folder or tarball (cifar10 workload)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--memory-clients", type=int, nargs="*", help="extra client counts measured at one thread (default: 10 100 for digits, none for cifar10)")
    parser.add_argument("--chunk", type=int, default=1, help="batches per message (1 = exact)")
    parser.add_argument("--order", default="lockstep", choices=["lockstep", "arrival"])
    parser.add_argument("--also", nargs="*", default=[], metavar="KEY=VALUE", help="run each federated cell again with these keys")
    parser.add_argument("--threads", nargs="+", default=["one_thread", "all_cores"], choices=["one_thread", "all_cores"], help="which thread counts of this process to measure")
    parser.add_argument("--out", help="JSON path (default: benchmarks/results/federated_overhead[_WORKLOAD].json)")
    args = parser.parse_args()
    if args.memory_clients is None:
        args.memory_clients = [10, 100] if args.workload == "digits" else []
    BASE.update({"federated.chunk": args.chunk, "federated.order": args.order, **WORKLOADS[args.workload]})
    if args.workload == "cifar10":
        BASE["data.root"] = args.cifar_root
    suffix = "" if args.workload == "digits" else f"_{args.workload}"
    out_path = Path(args.out) if args.out else RESULTS / f"federated_overhead{suffix}.json"
    also = dict(parse_override(item) for item in args.also)
    out: dict[str, object] = {"environment": environment(), "workload": args.workload, "setting": BASE, "also": also}
    cores = os.cpu_count() or 1
    with TemporaryDirectory() as tmp:
        # Side by side at two thread counts of this process (the centralized trainer, or the
        # federated server); each simulated client is a Ray actor with one CPU either way.
        passes = (("one_thread", 1, set(args.clients) | set(args.memory_clients)), ("all_cores", cores, set(args.clients)))
        for label, threads, sizes in (p for p in passes if p[0] in args.threads):
            torch.set_num_threads(threads)
            central = centralized_epoch_s(tmp, f"centralized_{label}")
            figures: dict[str, object] = {"threads": threads, "centralized_epoch_s": central}
            out[label] = figures
            atomic_write_bytes(out_path, json.dumps(out, indent=2).encode())
            print(f"{label} ({threads} threads): centralized epoch {central:.2f} s")
            for n in sorted(sizes):
                runs = [(f"federated_{n}", {})] + ([(f"federated_{n}_also", also)] if also and n in args.clients else [])
                for name, keys in runs:
                    cfg = Config.from_flat({
                        **BASE, **keys, "run.output-dir": tmp, "run.name": f"{name}_{label}", "partition.num-partitions": n,
                        "federated.fraction-evaluate": 1 / n,
                    })
                    with PeakMemory() as memory:
                        rounds = run_federated(cfg, n)["rounds"]
                    epoch = statistics.median(r["train_time_s"] for r in rounds)
                    row = {
                        "epoch_s": epoch,
                        "ratio_to_centralized": epoch / central,
                        "messages": statistics.median(r["messages"] for r in rounds),
                        "round_trip_mean_ms": 1000 * statistics.median(r["round_trip_mean_s"] for r in rounds),
                        "server_compute_s": statistics.median(r["server_compute_s"] for r in rounds),
                        "peak_rss_mib_all_processes": memory.peak,
                    }
                    figures[name] = row
                    atomic_write_bytes(out_path, json.dumps(out, indent=2).encode())
                    print(
                        f"  {name}: epoch {row['epoch_s']:.2f} s (x{row['ratio_to_centralized']:.2f} centralized), "
                        f"{row['messages']:.0f} messages, round trip {row['round_trip_mean_ms']:.0f} ms, "
                        f"server compute {row['server_compute_s']:.2f} s, peak memory {memory.peak:.0f} MiB"
                    )
            # The reference again, after the cells: on this shared machine a three-epoch median
            # moved 21.2-25.6 s between runs of the same benchmark, so each ratio is also given
            # against the second figure, and the two bracket what the machine's drift allows.
            after = centralized_epoch_s(tmp, f"centralized_{label}_after")
            figures["centralized_epoch_s_after"] = after
            for name, row in figures.items():
                if isinstance(row, dict):
                    row["ratio_to_centralized_after"] = row["epoch_s"] / after
            atomic_write_bytes(out_path, json.dumps(out, indent=2).encode())
            print(f"{label}: centralized epoch after the federated cells {after:.2f} s (before: {central:.2f} s)")
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
