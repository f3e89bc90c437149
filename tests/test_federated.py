"""Federated split learning on Flower: same numbers as centralized, exact CEM merge, faults, resume."""

from __future__ import annotations

import json
import random
from typing import Callable

import pytest
import torch
from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable

from fl_cem.cem import ConditionalEntropy, MixtureStats
from fl_cem.config import Config
from fl_cem.federated.client_logic import SplitClient
from fl_cem.federated.server_loop import FederatedRun
from fl_cem.federated.waves import Waves
from fl_cem.federated.wire import from_bytes
from fl_cem.reporting.run_dir import RunDir
from fl_cem.training.centralized import train_centralized
from fl_cem.training.client import Client

from .conftest import simulate, simulate_killed_in_round_two


def federated_weights(run: RunDir, partition: int = 0) -> dict[str, torch.Tensor]:
    state = torch.load(run.checkpoint_path, weights_only=True)
    client = from_bytes(bytes(state["client_states"][partition].numpy()))
    return {**{f"e.{k}": v for k, v in client["client"]["encoder"].items()}, **{f"d.{k}": v for k, v in state["server"]["shared"]["decoder"].items()}}


def centralized_weights(run: RunDir) -> dict[str, torch.Tensor]:
    state = torch.load(run.checkpoint_path, weights_only=True)
    return {**{f"e.{k}": v for k, v in state["client"]["encoder"].items()}, **{f"d.{k}": v for k, v in state["server"]["decoder"].items()}}


def test_two_clients_train_and_report_per_client_accuracy(tiny: Callable[..., Config]) -> None:
    # Prepare
    cfg = tiny(**{"run.name": "fed2", "partition.num-partitions": 2, "federated.rounds": 3, "cem.lambda": 0.01, "cem.federation": "global"})
    # Execute
    simulate(cfg, num_clients=2)
    # Assert
    results = json.loads(RunDir.for_config(cfg).results_path.read_text())
    rounds = results["rounds"]
    assert results["kind"] == "federated" and len(rounds) == 3
    assert rounds[-1]["train_loss"] < rounds[0]["train_loss"]
    test = rounds[-1]["test"]
    assert {"accuracy_client_0", "accuracy_client_1", "accuracy_mean", "accuracy_std"} <= set(test)
    assert 0 <= test["accuracy_min"] <= test["accuracy_mean"] <= test["accuracy_max"] <= 1
    assert {"local_accuracy_client_0", "local_accuracy_client_1", "local_accuracy_mean"} <= set(test)
    assert 0 <= test["local_accuracy_min"] <= test["local_accuracy_mean"] <= test["local_accuracy_max"] <= 1
    assert "local_test_accuracy_mean" in results["final"]
    cem = results["rounds"][-1]["cem"]
    assert "client_0_hxz_relative" in cem and "global_hxz_relative" in cem
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(RunDir.for_config(cfg).tb_dir)).Reload()
    assert {"train/lr", "test/accuracy_client_1", "test/local_accuracy_mean", "cem/global_hxz_relative"} <= set(board.Tags()["scalars"])
    assert "server_view/smashed_channel0" in board.Tags()["images"]
    assert (RunDir.for_config(cfg).tb_dir / "hparams").is_dir()
    assert results["status"] == "finished"
    intercepted = torch.load(RunDir.for_config(cfg).root / "intercept" / "intercept.pt", weights_only=True)
    assert 0 < len(intercepted["z"]) <= cfg.attack.intercept_max
    assert set(intercepted["meta"][:, 0].tolist()) <= {0, 1}


@pytest.mark.parametrize(("variant", "lam", "side"), [("paper", 0.0, 8), ("paper", 0.01, 8), ("official", 16.0, 8), ("paper", 0.01, 32)])
def test_one_client_equals_centralized_training(tiny: Callable[..., Config], variant: str, lam: float, side: int) -> None:
    # Prepare: one client holding all data, exact chunk, CEM fitted locally as centralized does
    # (official: no CEM in epoch 1, the mixture fitted after it); 32x32 images run channels-last
    # on the CPU, so smashed data and gradients change layout on the wire
    common = {"partition.num-partitions": 1, "federated.chunk": 1, "federated.rounds": 2, "federated.local-epochs": 1, "train.epochs": 2, "cem.lambda": lam, "cem.variant": variant, "cem.federation": "local", "data.image-size": side}
    fed = tiny(**common, **{"run.name": "fed"})
    cen = tiny(**common, **{"run.name": "cen"})
    # Execute
    simulate(fed, num_clients=1)
    train_centralized(cen, log=lambda _: None)
    # Assert: bit-identical
    a, b = federated_weights(RunDir.for_config(fed)), centralized_weights(RunDir.for_config(cen))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_merged_client_statistics_equal_statistics_of_the_union(tiny: Callable[..., Config]) -> None:
    # Prepare
    cfg = tiny(**{"partition.num-partitions": 3, "partition.partitioner": "dirichlet"})
    clients = [SplitClient(cfg, pid, 3, torch.device("cpu"), None) for pid in range(3)]
    features = [c.features() for c in clients]
    z = torch.cat([f[0] for f in features]).flatten(1)
    y = torch.cat([f[1] for f in features])
    centres, _ = clients[0].local_centres(None, seed=0)
    # Execute
    merged = MixtureStats.merge([c.local_stats(centres) for c in clients])
    union = MixtureStats.compute(z, y, centres, cfg.cem.clusters_per_class, cfg.cem.covariance)
    # Assert
    assert torch.equal(merged.counts, union.counts)
    torch.testing.assert_close(merged.sums, union.sums, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(merged.moments, union.moments, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("federation", ["global", "local"])
def test_a_clients_cem_loss_weighs_its_batch_against_the_data_its_mixture_describes(tiny: Callable[..., Config], federation: str) -> None:
    # Prepare: a label-skewed client; the merged (global) mixture describes the federation's data
    cfg = tiny(**{"partition.num-partitions": 3, "partition.partitioner": "dirichlet", "cem.lambda": 16.0, "cem.federation": federation})
    clients = [SplitClient(cfg, pid, 3, torch.device("cpu"), None) for pid in range(3)]
    centres, _ = clients[0].local_centres(None, seed=0)
    merged = MixtureStats.merge([c.local_stats(centres) for c in clients])
    described = sum(c.num_examples for c in clients) if federation == "global" else clients[1].num_examples
    reference = ConditionalEntropy(cfg.cem, cfg.noise.sigma, clients[1].splits.num_classes, described)
    reference.load_stats(merged)
    clients[1].load_mixture(merged)
    z, y = clients[1].features()
    # Execute: a batch small enough that the official blend of its variance is not saturated
    loss = clients[1].cem.loss(z[:3], y[:3])
    # Assert: the same loss as a CEM object over the data the mixture describes
    assert clients[1].cem.dataset_size == described
    torch.testing.assert_close(loss, reference.loss(z[:3], y[:3]), rtol=0, atol=0)


def fail_partition(partition: int, round_: str) -> Callable[[Message, Context, ClientAppCallable], Message]:
    """A Flower Mod that makes one client raise mid-round: on its second training message of a round.

    The trigger is read from the message itself (not from a counter): a raising ClientApp's
    context changes are not kept, and the mod runs in whichever Ray actor serves the node.
    """

    def mod(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
        if (
            message.metadata.message_type == "train.step"
            and message.metadata.group_id == round_
            and int(context.node_config["partition-id"]) == partition
            and not message.content["config"]["start"]
        ):
            raise RuntimeError("injected client failure")
        return call_next(message, context)

    return mod


def test_a_failing_client_is_left_out_and_the_run_continues(tiny: Callable[..., Config]) -> None:
    # Prepare
    cfg = tiny(**{"run.name": "faulty", "partition.num-partitions": 3, "federated.rounds": 2})
    # Execute
    simulate(cfg, num_clients=3, mods=[fail_partition(partition=1, round_="1")])
    # Assert: round 1 finishes with the two healthy clients, round 2 with all three
    rounds = json.loads(RunDir.for_config(cfg).results_path.read_text())["rounds"]
    assert [r["clients_trained"] for r in rounds] == [2, 3]


def test_run_fails_clearly_when_too_few_clients_remain(tiny: Callable[..., Config]) -> None:
    # Prepare
    cfg = tiny(**{"run.name": "toofew", "partition.num-partitions": 2, "federated.min-clients": 2, "federated.rounds": 1})
    # Execute / Assert
    with pytest.raises(Exception, match="min-clients"):
        simulate(cfg, num_clients=2, mods=[fail_partition(partition=0, round_="1")])


def test_killed_run_resumes_to_the_same_result(tiny: Callable[..., Config]) -> None:
    # Prepare: the broken run loses every client in round 2, after round 1 was checkpointed
    common = {"partition.num-partitions": 2, "federated.rounds": 2, "federated.min-clients": 1, "cem.lambda": 0.01, "cem.federation": "global"}
    straight = tiny(**common, **{"run.name": "straight"})
    broken = tiny(**common, **{"run.name": "broken"})

    # Execute
    simulate(straight, num_clients=2)
    simulate_killed_in_round_two(broken, num_clients=2)
    simulate(broken, num_clients=2)
    # Assert
    a, b = federated_weights(RunDir.for_config(straight), 1), federated_weights(RunDir.for_config(broken), 1)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    ra = json.loads(RunDir.for_config(straight).results_path.read_text())["final"]
    rb = json.loads(RunDir.for_config(broken).results_path.read_text())["final"]
    assert ra["test_accuracy_mean"] == rb["test_accuracy_mean"]


def _waves(**keys: object) -> Waves[str]:
    """Serving order over three nodes with random ids (partitions 0, 1, 2); a reply ``"<rows> of <node>"``."""
    partitions = {30: 0, 10: 1, 20: 2}
    return Waves(Config.from_flat(keys).federated, partitions.__getitem__, lambda reply: int(reply.split()[0]))


def _serve_in_random_arrival_order(waves: Waves[str], chunks: int, rows: dict[int, int]) -> list[list[int]]:
    """Every node sends ``chunks`` replies of ``rows[node]`` images, one after another, arriving in
    a random order; returns the groups served, as node lists."""
    left = {node: chunks for node in rows}
    in_flight, active, waiting, served = list(rows), set(rows), {}, []
    rng = random.Random(0)
    while in_flight:
        node = in_flight.pop(rng.randrange(len(in_flight)))
        waiting[node] = f"{rows[node]} of {node}"
        for group in waves.release(waiting, active):
            served.append([int(reply.split()[-1]) for reply in group])
            for served_node in served[-1]:
                left[served_node] -= 1
                if left[served_node]:
                    in_flight.append(served_node)
                else:
                    active.discard(served_node)
    return served


def test_lockstep_serves_each_chunk_in_partition_order_as_soon_as_it_may() -> None:
    # Execute: three nodes, four chunks each
    waves = _waves(**{"federated.order": "lockstep"})
    served = _serve_in_random_arrival_order(waves, 4, {30: 16, 10: 16, 20: 16})
    # Assert: waves in partition order, each chunk alone, the first client served before the others arrive
    assert served == [[30], [10], [20]] * 4
    assert _waves().release({30: "16 of 30"}, {30, 10, 20}) == [["16 of 30"]]


def test_server_mix_serves_each_wave_whole() -> None:
    served = _serve_in_random_arrival_order(_waves(**{"federated.server-mix": True}), 3, {30: 16, 10: 16, 20: 16})
    assert served == [[30, 10, 20]] * 3


def test_server_batch_alone_joins_consecutive_chunks_until_they_hold_enough_images() -> None:
    # Prepare: chunks of 16, 40 and 16 images; the server steps on at least 50 at once
    waves = _waves(**{"federated.server-batch": 50})
    # Execute
    served = _serve_in_random_arrival_order(waves, 3, {30: 16, 10: 40, 20: 16})
    # Assert: partitions 0 and 1 together (56 images), partition 2 alone at the wave's end
    assert served == [[30, 10], [20]] * 3
    # the first group is released as soon as it is whole, before the wave's last chunk is in
    waves = _waves(**{"federated.server-batch": 50})
    assert waves.release({30: "16 of 30", 10: "40 of 10"}, {30, 10, 20}) == [["16 of 30", "40 of 10"]]


def test_a_node_that_left_ends_the_wave_and_releases_the_group_before_it() -> None:
    waves = _waves(**{"federated.server-batch": 50})
    assert waves.release({30: "16 of 30"}, {30, 10, 20}) == []
    # partitions 1 and 2 timed out or failed: the wave ends with partition 0's chunk
    assert waves.release({}, {30}) == [["16 of 30"]]


def test_global_cem_refits_at_the_epochs_centralized_training_refits(tiny: Callable[..., Config], monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: two local epochs per round, a refit every epoch (official variant: the first
    # mixture after epoch 1), so the server must refit within a round as well as at its start
    common = {"cem.lambda": 16.0, "cem.variant": "official", "cem.federation": "global", "train.epochs": 4, "federated.rounds": 2, "federated.local-epochs": 2}
    fed = tiny(**common, **{"run.name": "fed", "partition.num-partitions": 2})
    cen = tiny(**common, **{"run.name": "cen"})
    federated_refits: list[int] = []
    central_refits: list[int] = []
    refit_global = FederatedRun.refit_global_cem
    refit_client = Client.refit

    def spy_global(self: FederatedRun, server_round: int, sampled: list[int], epoch: int, encoder: object = None, within_round: bool = False) -> None:
        federated_refits.append(epoch)
        refit_global(self, server_round, sampled, epoch, encoder, within_round)  # type: ignore[arg-type]

    def spy_central(client: Client, batches: object, seed: int) -> None:
        central_refits.append(seed - cen.run.seed)  # the seed of the refit before epoch E is run.seed + E
        refit_client(client, batches, seed)  # type: ignore[arg-type]

    monkeypatch.setattr(FederatedRun, "refit_global_cem", spy_global)
    monkeypatch.setattr(Client, "refit", spy_central)
    # Execute
    simulate(fed, num_clients=2)
    train_centralized(cen, log=lambda _: None)
    # Assert: epochs 1, 2 and 3 start with a fresh mixture on both paths (centralized also
    # refits after the last epoch, to report the bound)
    assert federated_refits == [1, 2, 3]
    assert [e for e in central_refits if e < 4] == [1, 2, 3]
    results = json.loads(RunDir.for_config(fed).results_path.read_text())
    assert results["status"] == "finished" and "global_hxz_relative" in results["rounds"][-1]["cem"]


def test_epoch_sampling_covers_every_client_and_the_window_does_not_change_results(tiny: Callable[..., Config]) -> None:
    # Prepare: 4 clients, 2 a round with sampling = epoch -> rounds 1-2 train each client once;
    # one client evaluated per round; the same run with one message in flight at a time
    common = {"partition.num-partitions": 4, "federated.rounds": 2, "federated.fraction-train": 0.5, "federated.sampling": "epoch",
              "federated.fraction-evaluate": 0.25, "cem.lambda": 0.0}
    open_window = tiny(**common, **{"run.name": "open", "federated.max-in-flight": 0})
    narrow = tiny(**common, **{"run.name": "narrow", "federated.max-in-flight": 1})
    # Execute
    simulate(open_window, num_clients=4)
    simulate(narrow, num_clients=4)
    # Assert
    rounds = json.loads(RunDir.for_config(open_window).results_path.read_text())["rounds"]
    trained = [r["trained_partitions"] for r in rounds]
    assert [len(t) for t in trained] == [2, 2] and sorted(trained[0] + trained[1]) == [0, 1, 2, 3]
    assert all(r["test"]["clients"] == 1 for r in rounds)
    assert [r["trained_partitions"] for r in json.loads(RunDir.for_config(narrow).results_path.read_text())["rounds"]] == trained
    for partition in trained[1]:
        a, b = federated_weights(RunDir.for_config(open_window), partition), federated_weights(RunDir.for_config(narrow), partition)
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_clients_of_one_process_share_their_partitions_and_model(tiny: Callable[..., Config], monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: drawing the partitions costs O(N) partitioner calls and building VGG11 50 ms, so
    # both once per process (drawing them per client made N = 1,000 quadratic: 6 s a client)
    from fl_cem.federated import client_logic

    calls = {"partitions": 0, "model": 0}
    real_partitions, real_model = client_logic.partition_indices, client_logic.build_model

    def counted_partitions(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["partitions"] += 1
        return real_partitions(*args, **kwargs)

    def counted_model(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["model"] += 1
        return real_model(*args, **kwargs)

    monkeypatch.setattr(client_logic, "partition_indices", counted_partitions)
    monkeypatch.setattr(client_logic, "build_model", counted_model)
    for cache in (client_logic._partitions, client_logic._model, client_logic._template):
        cache.cache_clear()
    cfg = tiny(**{"partition.num-partitions": 6, "run.seed": 11})
    # Execute
    clients = [SplitClient(cfg, pid, 6, torch.device("cpu"), None) for pid in range(6)]
    # Assert: one draw and one model for six clients, each with its own encoder and the same start
    assert calls == {"partitions": 1, "model": 1}
    assert len({id(c.client.encoder) for c in clients}) == 6
    first, last = clients[0].client.encoder.state_dict(), clients[-1].client.encoder.state_dict()
    assert all(torch.equal(first[k], last[k]) for k in first)
    assert len({int(i) for c in clients for i in c.loader.indices}) == sum(len(c.loader.indices) for c in clients)
