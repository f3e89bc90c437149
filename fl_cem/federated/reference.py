"""The federated split-learning protocol in one process, without Flower: a reference.

It drives the same :class:`SplitClient` and :class:`SplitServer` objects the apps use, in the
order the ServerApp serves them with ``federated.order = lockstep``: per round every client
starts from the SplitFed average or (vanilla) its own encoder; waves of one chunk per client
in partition order, each chunk's gradient applied by its client before it smashes the next;
at each sync point (``federated.sync-every``) and at the round's end the sample-weighted
average of the encoders (and of SplitFed V1's decoder copies); then the evaluation of every
client's encoder with the shared decoder on the test split.

Two uses: tests check that the Flower path computes what this protocol computes (so a
difference in accuracy is a property of the protocol, not of the plumbing), and
``benchmarks/federated_accuracy.py`` sweeps variants and client counts with it, which the
simulation engine would take hours for at N = 100 on two cores. Scope: every client trains
every round (``fraction-train = 1``) and CEM is not trained (``cem.lambda = 0``). Each round
records the clients' round metrics (their mean, weighted by examples, as the strategy's) and,
on a hijacking server, the inversion's score (:meth:`FeatureSpaceHijack.score`).
"""

from __future__ import annotations

import time
from typing import Any, Callable

from torch import Tensor

from fl_cem.config import Config
from fl_cem.federated.averaging import average_states
from fl_cem.federated.client_logic import SplitClient
from fl_cem.federated.hijack import replay_from, round_line
from fl_cem.federated.server_logic import Chunk, SplitServer
from fl_cem.training.setup import resolve_device


def run_reference(cfg: Config, num_clients: int, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train ``cfg`` with ``num_clients`` in-process clients; returns per-round records like ``results.json``."""
    if cfg.federated.fraction_train != 1.0 or cfg.cem.enabled:
        raise ValueError("the in-process reference runs every client every round without CEM training (fraction-train = 1, cem.lambda = 0)")
    cfg = cfg.replace(**{"partition.num-partitions": num_clients})
    device = resolve_device(cfg.run.device)
    clients = [SplitClient(cfg, pid, num_clients, device, None) for pid in range(num_clients)]
    splits = clients[0].splits
    server = SplitServer(cfg, splits.shape, splits.num_classes, device)
    fed = cfg.federated
    average: dict[str, Tensor] | None = None
    rounds = []
    for server_round in range(1, fed.rounds + 1):
        tick = time.perf_counter()
        for client in clients:
            if average is not None:
                client.load_encoder(average)
            client.start_round((server_round - 1) * fed.local_epochs, fed.local_epochs, num_clients)
        server.start_round(num_clients)
        epoch_batches = sum(len(c.loader) for c in clients)
        grads: dict[int, Tensor] = {}
        active, synced = list(range(num_clients)), []
        loss = correct = count = 0.0
        while active or synced:
            if synced and not active:
                _average(clients, synced, server)
                active, synced = synced, []
            group: list[Chunk] = []  # batches the server pools into its next steps (fl_cem.federated.waves)
            for pid in list(active):
                client = clients[pid]
                if pid in grads:
                    client.apply_gradients(grads.pop(pid))
                if client.done or client.sync_due:
                    active.remove(pid)
                    if not client.done:
                        synced.append(pid)
                    continue
                z, y, epochs, sizes, batches = client.next_chunk(fed.chunk)
                if fed.pools:
                    group.append(Chunk(pid, z, y, sizes, epochs, batches))
                    if fed.server_mix or sum(sum(c.sizes) for c in group) < fed.server_batch:
                        continue
                    pooled, served = server.serve_wave(group, server_round, epoch_batches)
                    grads.update(pooled)
                    group = []
                else:
                    grads[pid], served = server.serve(z, y, sizes, epochs, pid, server_round, batches, epoch_batches)
                loss, correct, count = loss + served["loss_sum"], correct + served["correct"], count + served["count"]
            if group:
                pooled, served = server.serve_wave(group, server_round, epoch_batches)
                grads.update(pooled)
                loss, correct, count = loss + served["loss_sum"], correct + served["correct"], count + served["count"]
        client_metrics = _client_means(clients)
        hijack = server.hijack.score(replay_from({c.partition_id: c.loader for c in clients})) if server.hijack is not None else {}
        if fed.averages_encoders:
            average = _average(clients, list(range(num_clients)), server)
        accuracy, local = {}, {}
        for client in clients:
            if average is not None:
                client.load_encoder(average)
            z, y = client.evaluate("test", cfg.run.seed + server_round)
            accuracy[client.partition_id] = server.classify(z, y, client.partition_id)["accuracy"]
            z, y = client.evaluate("local_test", cfg.run.seed + server_round)
            local[client.partition_id] = server.classify(z, y, client.partition_id)["accuracy"]
        values, local_values = list(accuracy.values()), list(local.values())
        record = {
            "round": server_round,
            "train_time_s": time.perf_counter() - tick,
            "train_loss": loss / max(count, 1),
            "train_accuracy": correct / max(count, 1),
            "client": client_metrics,
            "hijack": hijack,
            "test": {
                "accuracy_mean": sum(values) / len(values), "accuracy_min": min(values), "accuracy_max": max(values),
                "local_accuracy_mean": sum(local_values) / len(local_values), "local_accuracy_min": min(local_values),
                "local_accuracy_max": max(local_values),
                **{f"accuracy_client_{p}": a for p, a in accuracy.items()}, **{f"local_accuracy_client_{p}": a for p, a in local.items()},
            },
        }
        rounds.append(record)
        log(f"reference round {server_round}/{fed.rounds} | loss {record['train_loss']:.3f} | test acc mean {record['test']['accuracy_mean']:.3f}{round_line(hijack)}")
    return {"kind": "federated-reference", "clients": num_clients, "rounds": rounds, "final": {"test_accuracy_mean": rounds[-1]["test"]["accuracy_mean"]}}


def _client_means(clients: list[SplitClient]) -> dict[str, float]:
    """The clients' round metrics, weighted by their examples (the strategy's ``aggregate_train``)."""
    per_client = [(c.round_metrics(), float(c.num_examples)) for c in clients]
    total = sum(w for _, w in per_client)
    keys = set.intersection(*(set(m) for m, _ in per_client))
    return {key: sum(m[key] * w for m, w in per_client) / total for key in sorted(keys)}


def _average(clients: list[SplitClient], pids: list[int], server: SplitServer) -> dict[str, Tensor]:
    """SplitFed's FedAvg over ``pids``: the encoders (loaded back into them) and V1's decoder copies."""
    weights = {pid: float(clients[pid].num_examples) for pid in pids}
    average = average_states([clients[pid].encoder_state() for pid in pids], [weights[pid] for pid in pids])
    for pid in pids:
        clients[pid].load_encoder(average)
    server.average_decoders(weights)
    return average
