"""The ServerApp's main loop: rounds from the strategy, smashed batches served as they come in.

Per round: sample clients; for ``cem.federation = global`` merge the clients' CEM statistics
(local k-means centres -> global centres -> exact moment-matched mixture); send each sampled
client its first ``train.step``; then serve replies as they arrive: every reply carries one
chunk of smashed data, the decoder steps on it, and the gradient goes back piggy-backed on the
client's next request, until the client reports ``done``. Then aggregate (SplitFed average when
syncing encoders), evaluate every client's encoder with the shared decoder, checkpoint.

Messages travel through :class:`~fl_cem.federated.exchange.Exchange`.

Serving order (``federated.order``, :mod:`fl_cem.federated.waves`): with ``lockstep`` the server
serves in waves, every active client's next chunk once, in partition order, each chunk (or group
of chunks the server pools) as soon as it and its predecessors in the wave are in; clients still
compute concurrently, but the sequence of decoder steps no longer depends on timing, so runs
repeat exactly and a resumed run ends where an uninterrupted one does. ``arrival`` serves each
chunk the moment it arrives: no waiting on the slowest client, at the price of timing-dependent
results.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fl_cem.cem import MixtureStats
from fl_cem.config import Config
from fl_cem.data import BatchLoader
from fl_cem.federated.client_logic import SplitClient
from fl_cem.federated.exchange import Exchange, TooFewClients, discover
from fl_cem.federated.global_cem import GlobalCem
from fl_cem.federated.hijack import replay_from, round_line
from fl_cem.federated.server_logic import Chunk, SplitServer
from fl_cem.federated.waves import Waves
from fl_cem.federated.wire import from_record, to_record
from fl_cem.reporting.board import Board
from fl_cem.reporting.progress import eta_line
from fl_cem.reporting.run_dir import CHECKPOINT_LAYOUT, RunDir, RunFolderTaken, atomic_torch_save, environment, git_commit, refuse_other_kind
from fl_cem.training.client import global_refit_due
from fl_cem.training.schedule import Position
from fl_cem.training.setup import resolve_device
from strategies.split_strategy import SplitLearningStrategy


class FederatedRun:
    """State of a federated run across rounds; checkpointed after every round."""

    def __init__(self, grid: Grid, cfg: Config, log: Callable[[str], None] = print) -> None:
        self.grid = grid
        self.cfg = cfg
        self.log = log
        self.run_dir = RunDir.for_config(cfg)
        self.exchange = Exchange(grid, cfg.federated.client_timeout, log, cfg.federated.max_in_flight)
        self.nodes = discover(grid, self.exchange, cfg, log)
        first = next(iter(self.nodes.values()))
        self.shape = tuple(int(s) for s in first["shape"])
        self.num_classes = int(first["num_classes"])
        self.pixel_var = float(first["pixel_var"])
        self.pixel_entropy = float(first["pixel_entropy"])
        self.server = SplitServer(cfg, self.shape, self.num_classes, resolve_device(cfg.run.device))  # type: ignore[arg-type]
        self.strategy = SplitLearningStrategy(
            cfg.federated.fraction_train, cfg.federated.averages_encoders, self.server.classify,
            cfg.cem.clusters_per_class, cfg.cem.kmeans_iters, cfg.run.seed, cfg.cem.secure_aggregation,
            bounded=cfg.cem.bounded_uploads, noised=cfg.cem.stats_noise > 0,
            sampling=cfg.federated.sampling, fraction_evaluate=cfg.federated.fraction_evaluate,
        )
        # Partition order, not node-id order: node ids are random per run, so sampling over them
        # picked different partitions in every run of the same config.
        self.strategy.nodes = sorted(self.nodes, key=self.partition)
        self.global_encoder = ArrayRecord()
        self.cem = GlobalCem(cfg, self.strategy, self.gather_sorted, self.partition)
        self.client_states: dict[int, bytes] = {}
        self.history: list[dict[str, Any]] = []
        self.start_round = 1
        self.replay_loaders: dict[int, BatchLoader] = {}
        """Each client's training loader rebuilt here, for scoring a hijacking server's inversions only."""

    # ------------------------------------------------------------------ checkpoints
    def save(self, next_round: int) -> None:
        atomic_torch_save(
            {
                "kind": "federated",
                "layout": CHECKPOINT_LAYOUT,
                "config": self.cfg.to_flat(),
                "round": next_round,
                "server": self.server.state_dict(),
                "global_encoder": {k: torch.from_numpy(v.numpy().copy()) for k, v in self.global_encoder.items()},
                "mixture": self.cem.mixture.state_dict() if self.cem.mixture is not None else {},
                "client_states": {pid: torch.frombuffer(bytearray(blob), dtype=torch.uint8) for pid, blob in self.client_states.items()},
                "history": self.history,
                "stats_recorder": self.cem.recorder.state_dict(),
            },
            self.run_dir.checkpoint_path,
        )

    def resume(self) -> None:
        """Restore the last finished round and hand every client its saved state back."""
        state = torch.load(self.run_dir.checkpoint_path, map_location="cpu", weights_only=True)
        refuse_other_kind(self.run_dir, state, "federated")
        changed = self.cfg.differences(state["config"])
        if changed:
            raise RunFolderTaken(
                f"{self.run_dir.root} holds a checkpoint of a different config (keys differ: {', '.join(changed)}); "
                "choose another run.name or set run.resume = false to start over"
            )
        self.server.load_state_dict(state["server"])
        self.global_encoder = to_record(state["global_encoder"]) if state["global_encoder"] else ArrayRecord()
        self.cem.mixture = MixtureStats.from_state_dict(state["mixture"]) if state["mixture"] else None
        self.client_states = {int(pid): bytes(t.numpy()) for pid, t in state["client_states"].items()}
        self.history = list(state["history"])
        if "stats_recorder" in state:  # checkpoints written before the CEM channel was recorded have none
            self.cem.recorder.load_state_dict(state["stats_recorder"])
        self.start_round = int(state["round"])
        by_partition = {int(i["partition_id"]): node for node, i in self.nodes.items()}
        restores = [
            Message(RecordDict({"state": ConfigRecord({"blob": blob})}), by_partition[pid], "query.restore")
            for pid, blob in self.client_states.items()
            if pid in by_partition
        ]
        self.exchange.gather(restores)
        self.log(f"resumed {self.run_dir.root} after round {self.start_round - 1}")

    # ------------------------------------------------------------------ one round
    def refit_global_cem(self, server_round: int, sampled: Iterable[int], epoch: int, encoder: ArrayRecord | None = None, within_round: bool = False) -> None:
        """The global CEM refit before local epoch ``epoch`` (:meth:`GlobalCem.refit`): at a round's
        start, or within it on the encoders just averaged (``encoder``)."""
        self.cem.refit(server_round, sampled, epoch, encoder, self.refit_encoder(encoder, within_round))

    def refit_encoder(self, encoder: ArrayRecord | None, within_round: bool) -> dict[str, torch.Tensor] | None:
        """The encoder every client fits the refit with, where the server holds it: the average
        just sent within a round, or at a round's start SplitFed's average, which the previous
        round's evaluation loaded into every client (vanilla, or within a round without an
        average: the clients' own, which the server does not hold)."""
        if encoder is not None:
            return from_record(encoder)
        at_start = not within_round and self.cfg.federated.averages_encoders and len(self.global_encoder)
        return from_record(self.global_encoder) if at_start else None

    def by_partition(self, replies: Iterable[Message]) -> list[Message]:
        """Replies in partition order: aggregates must not depend on which client answered first."""
        return sorted(replies, key=lambda r: self.partition(r.metadata.src_node_id))

    def gather_sorted(self, messages: Iterable[Message]) -> list[Message]:
        return self.by_partition(self.exchange.gather(messages))

    def partition(self, node: int) -> int:
        return int(self.nodes[node]["partition_id"])

    def train_round(self, server_round: int, sampled: list[int]) -> tuple[list[Message], dict[str, float]]:
        """Serve the ``sampled`` clients' batches until each is done, failed or timed out."""
        cfg = self.cfg.federated
        config = ConfigRecord(
            {"round": server_round, "start": True, "first_epoch": (server_round - 1) * cfg.local_epochs, "epochs": cfg.local_epochs, "chunk": cfg.chunk}
        )
        messages = list(self.strategy.configure_train(server_round, self.global_encoder, config, sampled))
        for msg in messages:
            msg.content["config"]["clients"] = len(messages)
        self.server.start_round(len(messages))
        if self.cem.mixture is not None and self.cfg.cem.enabled and self.cfg.cem.federation == "global":
            for msg in messages:
                msg.content["mixture"] = to_record(self.cem.mixture.state_dict())
        self.exchange.send(messages)
        active = {m.metadata.dst_node_id for m in messages}
        epoch_batches = sum(int(self.nodes[node]["batches"]) for node in active)
        synced: dict[int, Message] = {}
        waiting: dict[int, Message] = {}
        waves: Waves[Message] = Waves(cfg, self.partition, smashed_rows)
        done: list[Message] = []
        served = {"loss_sum": 0.0, "correct": 0.0, "count": 0.0}
        serving = 0.0
        replies_before, trips_before = self.exchange.replies, self.exchange.round_trip_s
        while active or synced:
            if synced and not active:
                active = self.continue_after_sync(server_round, synced)
                waves.restart()
            replies, late = self.exchange.receive()
            active.difference_update(late)
            waiting.update((r.metadata.src_node_id, r) for r in replies)
            for group in waves.release(waiting, active):
                chunks: dict[int, Chunk] = {}
                for reply in group:
                    node = reply.metadata.src_node_id
                    if reply.has_error():
                        self.log(f"client on node {node} failed in round {server_round}: {reply.error.reason}; left out of this round")
                        active.discard(node)
                        continue
                    meta = reply.content["config"]
                    if meta["status"] == "done":
                        done.append(reply)
                        active.discard(node)
                    elif meta["status"] == "sync":
                        synced[node] = reply
                        active.discard(node)
                    else:
                        data = from_record(reply.content["smashed"])
                        chunks[node] = Chunk(int(meta["partition_id"]), data["z"], data["y"], list(meta["sizes"]), list(meta["epochs"]), list(meta["batches"]))
                if chunks:
                    serving += self.serve_chunks(server_round, chunks, active, served, epoch_batches)
        done = self.by_partition(done)
        if len(done) < self.cfg.federated.min_clients:
            raise TooFewClients(
                f"round {server_round}: {len(done)} clients finished, federated.min-clients is {self.cfg.federated.min_clients}"
            )
        count = max(served["count"], 1.0)
        messages = self.exchange.replies - replies_before
        return done, {
            "train_loss": served["loss_sum"] / count,
            "train_accuracy": served["correct"] / count,
            "messages": float(messages),
            "round_trip_mean_s": (self.exchange.round_trip_s - trips_before) / max(messages, 1),
            "server_compute_s": serving,
        }

    def serve_chunks(self, server_round: int, chunks: dict[int, Chunk], active: set[int], served: dict[str, float], epoch_batches: int) -> float:
        """Serve one client's chunk, or when the server pools (``federated.server-mix`` or
        ``server-batch``) a group of a wave (``chunks`` by node), and send each client its
        gradients; returns the seconds spent serving. Chunks the server cannot serve leave their
        clients out of the round."""
        tick = time.perf_counter()
        try:
            if self.cfg.federated.pools:
                grads, metrics = self.server.serve_wave(list(chunks.values()), server_round, epoch_batches)
            else:
                ((_, c),) = chunks.items()
                grad, metrics = self.server.serve(c.z, c.labels, c.sizes, c.epochs, c.client, server_round, c.batches, epoch_batches)
                grads = {c.client: grad}
        except (ValueError, RuntimeError) as err:
            self.log(f"round {server_round}: smashed data from node(s) {sorted(chunks)} could not be served ({err}); left out of this round")
            active.difference_update(chunks)
            return 0.0
        seconds = time.perf_counter() - tick
        for key in served:
            served[key] += metrics[key]
        step = ConfigRecord({"round": server_round, "start": False, "chunk": self.cfg.federated.chunk})
        for node, chunk in chunks.items():
            message = Message(RecordDict({"config": step, "grads": to_record({"grads": grads[chunk.client]})}), node, "train.step", group_id=str(server_round))
            self.exchange.send([message])
        return seconds

    def continue_after_sync(self, server_round: int, synced: dict[int, Message]) -> set[int]:
        """The clients paused within a round go on: SplitFed's average of their encoders (and V1's
        decoder copies) at a sync point, the global CEM refit at an epoch that refits (on the
        averaged encoders), or both; returns them as active again."""
        replies = self.by_partition(synced.values())
        content: dict[str, Any] = {"config": ConfigRecord({"round": server_round, "start": False, "chunk": self.cfg.federated.chunk})}
        if any(r.content["config"]["average"] for r in replies):
            content["encoder"], _ = self.strategy.aggregate_train(server_round, replies)
            self.server.average_decoders({self.partition(r.metadata.src_node_id): float(r.content["metrics"]["num_examples"]) for r in replies})
        if any(r.content["config"]["refit"] for r in replies):
            epoch = int(replies[0].content["config"]["epoch"])
            self.refit_global_cem(server_round, synced, epoch, content.get("encoder"), within_round=True)
            assert self.cem.mixture is not None
            content["mixture"] = to_record(self.cem.mixture.state_dict())
        self.exchange.send(
            [Message(RecordDict(dict(content)), r.metadata.src_node_id, "train.step", group_id=str(server_round)) for r in replies]
        )
        nodes = set(synced)
        synced.clear()
        return nodes

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        if cfg.run.resume and self.run_dir.checkpoint_path.is_file():
            self.resume()
        self.run_dir.write_config(cfg)
        results: dict[str, Any] = {
            "kind": "federated",
            "status": "running",
            "config": cfg.to_flat(),
            "commit": git_commit(),
            "environment": environment(),
            "clients": len(self.nodes),
            **({"cem_privacy": self.cem.privacy()} if cfg.cem.enabled and cfg.cem.federation == "global" else {}),
            "rounds": self.history,
            **{k: v for k, v in self.run_dir.read_results().items() if k == "attacks"},
        }
        self.run_dir.write_results(results)
        board = Board(self.run_dir.tb_dir)
        began = time.perf_counter()
        try:
            for server_round in range(self.start_round, cfg.federated.rounds + 1):
                tick = time.perf_counter()
                sampled = self.strategy.sample(server_round, self.strategy.eligible(self.grid))
                first_epoch = (server_round - 1) * cfg.federated.local_epochs
                if global_refit_due(cfg.cem, first_epoch):
                    self.refit_global_cem(server_round, sampled, first_epoch)
                done, train_metrics = self.train_round(server_round, sampled)
                aggregating = time.perf_counter()
                encoder, client_metrics = self.strategy.aggregate_train(server_round, done)
                if encoder is not None:
                    self.global_encoder = encoder
                self.server.average_decoders({int(r.content["config"]["partition_id"]): float(r.content["metrics"]["num_examples"]) for r in done})
                for reply in done:
                    self.client_states[int(reply.content["config"]["partition_id"])] = bytes(reply.content["state"]["blob"])
                train_time = time.perf_counter() - tick
                aggregate_time = time.perf_counter() - aggregating
                hijack = self.hijack_score()
                evaluating = time.perf_counter()
                eval_config = ConfigRecord({"seed": cfg.run.seed + server_round})
                eval_replies = self.gather_sorted(self.strategy.configure_evaluate(server_round, self.global_encoder, eval_config, self.grid))
                evaluation = self.strategy.aggregate_evaluate(server_round, eval_replies)
                for reply in eval_replies:  # the state a client ends the round in (SplitFed loads the average here)
                    self.client_states[int(reply.content["config"]["partition_id"])] = bytes(reply.content["state"]["blob"])
                last_epoch = server_round * cfg.federated.local_epochs - 1
                record = {
                    "round": server_round,
                    "lr": self.server.shared.schedule.lr(Position(last_epoch)),
                    "train_time_s": train_time,
                    "aggregate_time_s": aggregate_time,
                    "eval_time_s": time.perf_counter() - evaluating,
                    "clients_trained": len(done),
                    "trained_partitions": [int(r.content["config"]["partition_id"]) for r in done],
                    **train_metrics,
                    "client": dict(client_metrics or {}),
                    "test": dict(evaluation or {}),
                    "cem": self.cem.summary(eval_replies, self.num_classes, int(torch.tensor(self.shape).prod()), self.pixel_var, self.pixel_entropy),
                    "hijack": hijack,
                }
                self.history.append(record)
                saving = time.perf_counter()
                self.save(server_round + 1)
                self.server.interceptor.save(self.run_dir.root / "intercept" / "intercept.pt")
                if self.cem.recorder.uploads:
                    self.cem.recorder.save(self.run_dir.root / "intercept" / "cem_stats.pt")
                record["save_time_s"] = time.perf_counter() - saving
                self.run_dir.write_results(results)
                self.log_round(board, record, server_round, began)
            results["final"] = self.summary()
            board.hparams(cfg.to_flat(), {k: v for k, v in results["final"].items() if isinstance(v, float)})
        finally:
            board.close()
        results["status"] = "finished"
        self.run_dir.write_results(results)
        return results

    def hijack_score(self) -> dict[str, Any]:
        """A hijacking server's inversion of the round's last batches against the images the
        clients sent (:meth:`FeatureSpaceHijack.score`); empty on an honest server.

        The images come from the clients' data order, replayed by rebuilding each client's
        loader here from the config and its partition id, as the attack harness does: a
        measurement, never an input of the attack.
        """
        hijack = self.server.hijack
        if hijack is None:
            return {}
        count = int(next(iter(self.nodes.values()))["num_partitions"])
        device = resolve_device(self.cfg.run.device)
        for _, (client, _, _, _) in hijack.kept:
            if client not in self.replay_loaders:
                self.replay_loaders[client] = SplitClient(self.cfg, client, count, device, None).loader
        return hijack.score(replay_from(self.replay_loaders))

    def log_round(self, board: Board, record: dict[str, Any], server_round: int, began: float) -> None:
        board.scalars("train", {k: v for k, v in record.items() if isinstance(v, float)}, server_round)
        for section in ("client", "test", "cem"):
            board.scalars(section, record[section], server_round)
        board.scalars("hijack", {k: v for k, v in record["hijack"].items() if isinstance(v, float)}, server_round)
        if self.server.interceptor.z is not None:
            board.channels("server_view/smashed_channel0", self.server.interceptor.z, server_round)
        done = server_round - self.start_round + 1
        total = self.cfg.federated.rounds - self.start_round + 1
        test = record["test"]

        def spread(name: str) -> str:
            return f"{test.get(f'{name}_mean', nan):.3f} ({test.get(f'{name}_min', nan):.3f}-{test.get(f'{name}_max', nan):.3f})"

        nan = float("nan")
        self.log(
            f"{eta_line(done, total, time.perf_counter() - began, 'round', self.start_round - 1)} | loss {record['train_loss']:.3f} | "
            f"test acc {spread('accuracy')} | local test acc {spread('local_accuracy')} | {record['clients_trained']} clients"
            f"{round_line(record['hijack'])}"
        )

    def summary(self) -> dict[str, Any]:
        if not self.history:
            return {}
        last = self.history[-1]
        summary = {
            "rounds": last["round"],
            "test_accuracy_mean": last["test"].get("accuracy_mean"),
            "test_accuracy_std": last["test"].get("accuracy_std"),
            "test_accuracy_min": last["test"].get("accuracy_min"),
            "test_accuracy_max": last["test"].get("accuracy_max"),
            "local_test_accuracy_mean": last["test"].get("local_accuracy_mean"),
            "local_test_accuracy_min": last["test"].get("local_accuracy_min"),
            "local_test_accuracy_max": last["test"].get("local_accuracy_max"),
            "train_time_s": sum(r["train_time_s"] for r in self.history),
            "cem": last["cem"],
        }
        self.log(
            "summary: "
            + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items() if k != "cem")
            + f" | results in {self.run_dir.results_path}"
        )
        return summary


def smashed_rows(reply: Message) -> int:
    """Images of smashed data a reply carries (none in a ``done`` or ``sync`` reply, or an error)."""
    if reply.has_error():
        return 0
    meta = reply.content["config"]
    return sum(meta["sizes"]) if meta["status"] == "batch" else 0
