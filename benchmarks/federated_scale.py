"""Federated split learning at scale: N = 1,000 simulated clients against centralized training,
side by side in one process, with where the federated time and memory go.

Usage::

    python benchmarks/federated_scale.py                    # the measurement (N = 1,000, full CIFAR-10)
    python benchmarks/federated_scale.py --clients 100 --train-subset 5000 --out /tmp/s.json   # a quick check
    python benchmarks/federated_scale.py --profile DIR     # py-spy over every process of the run
    python benchmarks/federated_scale.py --set federated.server-mix=true --set federated.server-batch=128 --server-threads 2

The workload is the paper's (VGG11 split after conv 2 with the 8-channel bottleneck, batch 128,
lambda 0, as ``federated_overhead.py --workload cifar10``) on the whole CIFAR-10 training split
of the shared JPEG tarball (``data.val-fraction = 0``: 50,000 images, 50 per client). The
federation is SplitFed V2 (the default variant), exact split learning (chunk 1, lockstep), one
local epoch per round, ``federated.fraction-train = 0.1`` with ``federated.sampling = epoch``,
so ten rounds of 100 clients train every client exactly once: one epoch of the data. The
federated epoch time is the sum of those rounds' training phases as the server measures them
(evaluation, checkpoints, Ray start-up and node discovery are reported apart); the centralized
epoch time is the training loop of one epoch, with this process on ``--threads`` threads (default:
every core). The federated server runs on ``--server-threads`` (default 1): its two client actors
keep both cores busy, and a second OpenMP thread then waits on a descheduled one in every
parallel region (with two server threads beside the actors a decoder step on 50 images took
1.8 s; alone under the machine's other load, 1.84 s at two threads against 0.38 s at one).

Memory is the largest sum, sampled every 0.5 s, of the resident set sizes of this process and
all its descendants (Ray's GCS, raylet, workers and the client actors), split by kind at the
peak, as ``federated_overhead.py`` sums them (but other runs on the machine are not counted);
the sum of proportional set sizes (shared pages counted once) is sampled every 5 s beside it. Every ClientApp call is timed by a Flower Mod
(``timing_mod``) in the actor that runs it, with the size of ``context.state`` it returns.

``--profile DIR`` samples this process and every client actor with py-spy (raw stacks, one file
per process in DIR) and adds a summary of where the samples fall (per process kind, per driver
thread, the heaviest frames); profiling costs CPU, so its times are not the figures.

Writes ``benchmarks/results/federated_scale_1000.json`` (``--out``), with ``uptime`` before and
after and the busiest other processes, since the machine is shared.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any, Callable

import torch

from fl_cem.config import Config, parse_override
from fl_cem.federated.launch import run_federated
from fl_cem.reporting.run_dir import atomic_write_bytes, environment
from fl_cem.training.centralized import train_centralized

RESULTS = Path(__file__).parent / "results"
CIFAR_TARBALL = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"


# ============================================================================ setting
def setting(args: argparse.Namespace) -> dict[str, Any]:
    """The flat config both runs share (the federated keys are ignored centrally)."""
    rounds_per_epoch = -(-args.clients // max(1, round(args.fraction * args.clients)))
    return {
        "data.source": "imagefolder", "data.root": args.cifar_root, "data.val-fraction": 0.0,
        "data.train-subset": args.train_subset, "data.test-subset": args.test_subset,
        "model.arch": "vgg11", "model.cut": 2, "model.bottleneck": 8, "train.batch-size": 128,
        "cem.lambda": 0.0, "run.device": "cpu", "train.epochs": args.epochs,
        "partition.partitioner": "iid", "partition.num-partitions": args.clients,
        "federated.variant": "splitfed-v2", "federated.rounds": rounds_per_epoch * args.epochs, "federated.local-epochs": 1,
        "federated.fraction-train": args.fraction, "federated.sampling": "epoch", "federated.fraction-evaluate": args.fraction_evaluate,
        "federated.chunk": 1, "federated.order": "lockstep", "federated.max-in-flight": args.max_in_flight,
    }


# ============================================================================ memory
def process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) for every process."""
    table = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        table[int(proc.name)] = (int(stat[stat.rindex(")") + 2 :].split()[1]), cmd)
    return table


PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


def resident_kib(pid: int, proportional: bool) -> int:
    """RSS of one process in KiB, or with ``proportional`` its PSS. RSS counts a shared page
    (Ray's object store, the memory-mapped image cache) in every process that maps it; PSS
    divides it among them, so a sum of PSS is the memory really used. PSS is read from
    ``smaps_rollup``, which walks every mapping (a core's worth of kernel time when read twice
    a second from Ray's processes), so it is sampled less often."""
    try:
        if not proportional:
            return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_KIB
        return next(int(line.split()[1]) for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines() if line.startswith("Pss:"))
    except (OSError, ValueError, IndexError, StopIteration):
        return 0


def descendants(root: int) -> dict[int, str]:
    """pid -> kind (driver, client_actors, ray_other) of ``root`` and every process below it."""
    table = process_table()
    children: dict[int, list[int]] = defaultdict(list)
    for pid, (ppid, _) in table.items():
        children[ppid].append(pid)
    kinds: dict[int, str] = {}
    stack = [root]
    while stack:
        pid = stack.pop()
        stack.extend(children.get(pid, []))
        if pid in table:
            kinds[pid] = "driver" if pid == root else "client_actors" if "ClientAppActor" in table[pid][1] else "ray_other"
    return kinds


def tree_memory_kib(root: int, proportional: bool = False) -> dict[str, int]:
    """RSS (or PSS) KiB of ``root`` and its descendants by kind."""
    kinds: Counter[str] = Counter()
    for pid, kind in descendants(root).items():
        kinds[kind] += resident_kib(pid, proportional)
    return dict(kinds)


class TreeMemory:
    """Samples this process tree's RSS every 0.5 s and its PSS every 5 s while the block runs; keeps the peaks and their split."""

    def __enter__(self) -> "TreeMemory":
        self.peak_rss = self.peak_pss = 0
        self.at_peak: dict[str, int] = {}
        self.pss_at_peak: dict[str, int] = {}
        self.series: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._began = time.perf_counter()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        count = 0
        while not self._stop.is_set():
            kinds = tree_memory_kib(os.getpid())
            rss = sum(kinds.values())
            if rss > self.peak_rss:
                self.peak_rss, self.at_peak = rss, kinds
            if count % 10 == 0:
                pss = tree_memory_kib(os.getpid(), proportional=True)
                if sum(pss.values()) > self.peak_pss:
                    self.peak_pss, self.pss_at_peak = sum(pss.values()), pss
            self.series.append((round(time.perf_counter() - self._began, 1), rss))
            count += 1
            self._stop.wait(0.5)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def figures(self) -> dict[str, Any]:
        step = max(1, len(self.series) // 60)
        gib = 2**20
        return {
            "peak_rss_gib_all_processes": self.peak_rss / gib,
            "at_rss_peak_gib": {kind: kib / gib for kind, kib in sorted(self.at_peak.items())},
            "peak_pss_gib_all_processes": self.peak_pss / gib,
            "at_pss_peak_gib": {kind: kib / gib for kind, kib in sorted(self.pss_at_peak.items())},
            "rss_series_s_gib": [(t, round(kib / gib, 3)) for t, kib in self.series[::step]],
        }


# ============================================================================ client timing
def state_bytes(state: Any) -> int:
    """Bytes of a ``context.state`` RecordDict: array payloads and bytes/str values of config records."""
    total = 0
    for record in state.values():
        for value in record.values():
            if hasattr(value, "data") and isinstance(getattr(value, "data"), bytes):
                total += len(value.data)  # an Array
            elif isinstance(value, (bytes, str)):
                total += len(value)
    return total


def timing_mod(folder: str) -> Callable[..., Any]:
    """A Flower Mod timing each ClientApp call (wall and CPU) in the actor that runs it, with the
    size of the ``context.state`` it leaves; one JSON line per message in ``folder/<pid>.jsonl``."""

    files: dict[int, Any] = {}

    def mod(message: Any, context: Any, call_next: Callable[..., Any]) -> Any:
        wall, cpu = time.perf_counter(), time.process_time()
        reply = call_next(message, context)
        line = {
            "type": message.metadata.message_type,
            "wall_s": time.perf_counter() - wall,
            "cpu_s": time.process_time() - cpu,
            "state_bytes": state_bytes(context.state),
        }
        if os.getpid() not in files:  # one line-buffered file per actor process, opened once
            files[os.getpid()] = open(os.path.join(folder, f"{os.getpid()}.jsonl"), "a", buffering=1)
        files[os.getpid()].write(json.dumps(line) + "\n")
        return reply

    return mod


def client_timing(folder: Path) -> dict[str, Any]:
    """Per message type: count, total and mean handler wall/CPU time in the actors, state size."""
    by_type: dict[str, list[dict[str, float]]] = defaultdict(list)
    for path in folder.glob("*.jsonl"):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            by_type[row["type"]].append(row)
    out: dict[str, Any] = {"actors": len(list(folder.glob("*.jsonl")))}
    for kind, rows in sorted(by_type.items()):
        out[kind] = {
            "messages": len(rows),
            "wall_s_total": sum(r["wall_s"] for r in rows),
            "cpu_s_total": sum(r["cpu_s"] for r in rows),
            "wall_ms_mean": 1000 * statistics.fmean(r["wall_s"] for r in rows),
            "state_kib_mean": statistics.fmean(r["state_bytes"] for r in rows) / 1024,
        }
    return out


# ============================================================================ profile
class Profiler:
    """py-spy on this process and on each client actor as it appears (``--subprocesses`` does not
    reach Ray's workers, which the raylet starts); raw stacks, one file per process."""

    def __init__(self, folder: Path, rate: int) -> None:
        self.folder, self.rate = folder, rate
        self.spy = shutil.which("py-spy") or os.environ.get("PY_SPY")
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.kinds: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> "Profiler":
        if not self.spy:
            print("py-spy not found (pip install py-spy, or set PY_SPY): no profile")
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.is_set():
            for pid, kind in descendants(os.getpid()).items():
                if kind != "ray_other" and pid not in self.procs:
                    command = [str(self.spy), "record", "--pid", str(pid), "--nonblocking", "--threads", "--format", "raw",
                               "--rate", str(self.rate), "--output", str(self.folder / f"stacks-{kind}-{pid}.txt")]
                    self.procs[pid] = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    self.kinds[pid] = kind
            self._stop.wait(2.0)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        for proc in self.procs.values():
            proc.send_signal(2)  # SIGINT: py-spy writes its output and exits
        for proc in self.procs.values():
            proc.wait(timeout=120)


def summarise_stacks(folder: Path, top: int = 40) -> dict[str, Any]:
    """Where py-spy's samples fall: per process kind, per driver thread, and the heaviest frames
    (inclusive: a frame anywhere on the stack; self: the innermost frame) per process kind."""
    kinds: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    inclusive: dict[str, Counter[str]] = defaultdict(Counter)
    innermost: dict[str, Counter[str]] = defaultdict(Counter)
    for path in sorted(folder.glob("stacks-*.txt")):
        kind = path.name.split("-")[1]
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            frames = stack.split(";")
            body = [f for f in frames if not f.startswith(("thread ", "process "))]
            kinds[kind] += count
            if kind == "driver":
                threads[next((f for f in frames if f.startswith("thread ")), "thread ?")] += count
            for frame in set(body):
                inclusive[kind][frame] += count
            if body:
                innermost[kind][body[-1]] += count
    return {
        "samples_by_process_kind": dict(kinds),
        "driver_samples_by_thread": dict(threads.most_common(12)),
        "inclusive": {k: c.most_common(top) for k, c in inclusive.items()},
        "self": {k: c.most_common(top) for k, c in innermost.items()},
    }


# ============================================================================ machine load
def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def busiest_processes(limit: int = 8) -> list[str]:
    """The other processes using the CPU now (the machine is shared)."""
    out = subprocess.run(["ps", "-eo", "pid,stat,pcpu,rss,args", "--sort=-pcpu"], capture_output=True, text=True).stdout.splitlines()
    return [line[:160] for line in out[1 : limit + 1]]


# ============================================================================ main
def federated_figures(results: dict[str, Any], rounds_per_epoch: int, timing: dict[str, Any], wall_s: float) -> dict[str, Any]:
    rounds = results["rounds"]
    epochs = [rounds[i : i + rounds_per_epoch] for i in range(0, len(rounds), rounds_per_epoch)]
    per_epoch = [sum(r["train_time_s"] for r in e) for e in epochs]

    def total(key: str, part: list[dict[str, Any]]) -> float:
        return float(sum(r.get(key, 0.0) for r in part))

    first = epochs[0]
    return {
        "epoch_s": per_epoch,
        "rounds": len(rounds),
        "clients_trained_per_epoch": [sum(r["clients_trained"] for r in e) for e in epochs],
        "distinct_clients_trained_per_epoch": [len({p for r in e for p in r.get("trained_partitions", [])}) for e in epochs],
        "messages_per_epoch": [total("messages", e) for e in epochs],
        "per_phase_first_epoch_s": {
            "training (the epoch)": total("train_time_s", first),
            "of which the server's decoder steps": total("server_compute_s", first),
            "of which SplitFed averaging": total("aggregate_time_s", first),
            "evaluation (after each round)": total("eval_time_s", first),
            "checkpoint and results (after each round)": total("save_time_s", first),
        },
        "round_trip_mean_ms": 1000 * statistics.fmean(r["round_trip_mean_s"] for r in rounds),
        "client_handlers": timing,
        "wall_s_whole_run": wall_s,
        "test_accuracy_mean_last_round": rounds[-1]["test"].get("accuracy_mean"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--fraction", type=float, default=0.1, help="federated.fraction-train")
    parser.add_argument("--fraction-evaluate", type=float, default=0.01, help="federated.fraction-evaluate")
    parser.add_argument("--max-in-flight", type=int, default=Config.from_flat({}).federated.max_in_flight, help="federated.max-in-flight")
    parser.add_argument("--epochs", type=int, default=1, help="epochs both ways (federated: rounds of one pass over the clients each)")
    parser.add_argument("--train-subset", type=int, default=0, help="data.train-subset (0: the whole training split)")
    parser.add_argument("--test-subset", type=int, default=1000, help="data.test-subset (evaluation is not part of the epoch time)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads of the centralized trainer")
    parser.add_argument("--server-threads", type=int, default=1, help="torch threads of the federated server (it shares the cores with the client actors)")
    parser.add_argument("--cifar-root", default=str(CIFAR_TARBALL))
    parser.add_argument("--skip-centralized", action="store_true")
    parser.add_argument("--profile", help="folder for py-spy's stacks and summary (times are then not the figures)")
    parser.add_argument("--profile-rate", type=int, default=25, help="py-spy samples per second")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config key on top of the setting, e.g. federated.server-batch=128 (repeatable)")
    parser.add_argument("--out", help="JSON path (default: benchmarks/results/federated_scale_<N>.json)")
    args = parser.parse_args()
    flat = {**setting(args), **dict(parse_override(item) for item in args.set)}
    rounds_per_epoch = flat["federated.rounds"] // args.epochs
    out_path = Path(args.out) if args.out else RESULTS / f"federated_scale_{args.clients}{'_profile' if args.profile else ''}.json"
    out: dict[str, Any] = {
        "environment": environment(), "threads_centralized": args.threads, "threads_federated_server": args.server_threads, "setting": flat,
        "machine_load": {"uptime_before": uptime(), "busiest_before": busiest_processes()},
    }
    print(f"uptime before: {out['machine_load']['uptime_before']}", flush=True)
    with TemporaryDirectory() as tmp:
        if not args.skip_centralized:
            torch.set_num_threads(args.threads)
            cfg = Config.from_flat({**flat, "run.output-dir": tmp, "run.name": "centralized"})
            with TreeMemory() as memory:
                tick = time.perf_counter()
                epochs = train_centralized(cfg, log=lambda line: print(f"  centralized: {line}", flush=True))["epochs"]
                wall = time.perf_counter() - tick
            central = [e["train_time_s"] for e in epochs]
            out["centralized"] = {"epoch_s": central, "wall_s_whole_run": wall, "test_accuracy_last_epoch": epochs[-1]["test"]["accuracy"], **memory.figures()}
            print(f"centralized: epoch {statistics.median(central):.1f} s, peak memory {memory.peak_rss / 2**20:.2f} GiB (RSS sum)", flush=True)
        torch.set_num_threads(args.server_threads)
        timing_dir = Path(tmp) / "timing"
        timing_dir.mkdir()
        cfg = Config.from_flat({**flat, "run.output-dir": tmp, "run.name": "federated"})
        profiler = Profiler(Path(args.profile), args.profile_rate) if args.profile else contextlib.nullcontext()
        with profiler, TreeMemory() as memory:
            tick = time.perf_counter()
            results = run_federated(cfg, args.clients, mods=[timing_mod(str(timing_dir))])
            wall = time.perf_counter() - tick
        fed = federated_figures(results, rounds_per_epoch, client_timing(timing_dir), wall)
        fed.update(memory.figures())
        state = torch.load(Path(tmp) / "federated" / "checkpoint.pt", map_location="cpu", weights_only=True)["client_states"]
        fed["client_state_kib_mean"] = statistics.fmean(t.numel() for t in state.values()) / 1024 if state else 0.0
        fed["client_states_held_by_server"] = len(state)
        out["federated"] = fed
    out["machine_load"].update(uptime_after=uptime(), busiest_after=busiest_processes())
    if "centralized" in out:
        out["ratio_epoch_federated_to_centralized"] = statistics.median(fed["epoch_s"]) / statistics.median(out["centralized"]["epoch_s"])
    if args.profile:
        out["profile"] = summarise_stacks(Path(args.profile))
    split = ", ".join(f"{kind} {gib:.2f}" for kind, gib in fed["at_rss_peak_gib"].items())
    print(
        f"federated N={args.clients}: epoch {statistics.median(fed['epoch_s']):.1f} s"
        + (f" (x{out['ratio_epoch_federated_to_centralized']:.2f} centralized)" if "centralized" in out else "")
        + f", {fed['messages_per_epoch'][0]:.0f} messages per epoch, peak memory {fed['peak_rss_gib_all_processes']:.2f} GiB RSS sum, "
        f"{fed['peak_pss_gib_all_processes']:.2f} GiB PSS sum (at the RSS peak: {split}), "
        f"whole run {wall:.0f} s",
        flush=True,
    )
    print(json.dumps(fed["per_phase_first_epoch_s"], indent=1))
    print(json.dumps(fed["client_handlers"], indent=1))
    print(f"uptime after: {out['machine_load']['uptime_after']}")
    atomic_write_bytes(out_path, json.dumps(out, indent=2).encode())
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
