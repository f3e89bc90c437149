"""Round-level decisions of federated split learning, in the shape of a Flower ``Strategy``.

Within a round the ServerApp serves smashed batches one message at a time, which a
``Strategy``'s one-message-per-client round (``Strategy.start``) cannot express, so the round
loop is ``FederatedRun``'s and this class is not a ``Strategy`` subclass: it keeps the
``configure_*`` / ``aggregate_*`` names Flower users know. Everything decided per round lives here:
which clients train (``fraction-train``, ``sampling``) and are evaluated (``fraction-evaluate``), what they start from (the SplitFed average encoder
with SplitFed, Thapa et al., AAAI 2022), how encoders, metrics and CEM
statistics are aggregated, and how the per-client evaluation is summarised.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from torch import Tensor

from fl_cem.cem import MixtureStats
from fl_cem.cem.kmeans import combine_centres, lloyd_step_centres
from fl_cem.federated.averaging import average_states
from fl_cem.federated.secure_sum import unmask_sum
from fl_cem.federated.wire import from_record, to_record

Classify = Callable[[Tensor, Tensor, int], dict[str, float]]


class SplitLearningStrategy:
    """Client sampling, SplitFed encoder averaging, CEM statistics merging, evaluation summary.

    Parameters
    ----------
    fraction_train
        Share of connected clients sampled each round (at least one).
    averages_encoders
        SplitFed (V1 and V2) averages the encoders, weighted by the clients' sample counts,
        and starts the next round (or the rest of the round, at a sync point) from the
        average; vanilla split learning keeps each client's encoder.
    classify
        The server's decoder applied to one client's smashed evaluation data (like Flower's
        ``evaluate_fn``, but on features, since the server never holds images).
    seed
        Client sampling is drawn from its own generator so runs repeat exactly.
    secure
        ``cem.secure-aggregation``: the clients' CEM uploads are masked and only their sum is
        read (:mod:`fl_cem.federated.secure_sum`).
    bounded
        ``cem.stats-clip`` > 0: the first refit step's uploads are a clipped Lloyd step's counts
        and sums (:meth:`~fl_cem.federated.client_cem.CemUploads.lloyd_stats`), not local centres.
    noised
        ``cem.stats-noise`` > 0: the uploads carry Gaussian noise (:mod:`fl_cem.federated.stats_noise`),
        so the merge projects the sum onto statistics that data could have (:meth:`MixtureStats.feasible`).
    sampling
        ``federated.sampling``: ``random`` draws every round afresh (Flower's ``FedAvg``),
        ``epoch`` walks a permutation so every client trains once per pass (:meth:`sample`).
    fraction_evaluate
        Share of clients evaluated after each round (:meth:`configure_evaluate`).
    """

    def __init__(
        self, fraction_train: float, averages_encoders: bool, classify: Classify, clusters_per_class: int, kmeans_iters: int, seed: int,
        secure: bool = False, bounded: bool = False, noised: bool = False, sampling: str = "random", fraction_evaluate: float = 1.0,
    ) -> None:
        self.fraction_train = fraction_train
        self.sampling = sampling
        self.fraction_evaluate = fraction_evaluate
        self.averages_encoders = averages_encoders
        self.classify = classify
        self.clusters_per_class = clusters_per_class
        self.kmeans_iters = kmeans_iters
        self.seed = seed
        self.secure = secure
        self.bounded = bounded
        self.noised = noised
        self.nodes: list[int] | None = None
        """Nodes the run has admitted (answered ``hello``); ``None`` means all of the grid's."""

    def eligible(self, grid: Grid) -> list[int]:
        """The nodes to train and evaluate: the admitted ones, or every node the grid knows."""
        return list(self.nodes) if self.nodes is not None else sorted(grid.get_node_ids())

    def sample(self, server_round: int, node_ids: list[int]) -> list[int]:
        """A reproducible sample of ``ceil(fraction * n)`` nodes for this round (``node_ids`` in a
        run-independent order: the loop passes them in partition order).

        ``random`` draws each round independently, as Flower's ``sample_nodes`` does: over
        ``1 / fraction`` rounds a client is missed with probability ``(1 - fraction)^(1 / fraction)``
        (35 % at 0.1). ``epoch`` shuffles all nodes once per pass of ``ceil(n / count)`` rounds and
        hands out consecutive slices of that permutation, so a pass trains every client once
        (the last slice of a pass is shorter when ``count`` does not divide ``n``).
        """
        count = max(1, math.ceil(self.fraction_train * len(node_ids)))
        if self.sampling == "random":
            order = torch.randperm(len(node_ids), generator=torch.Generator().manual_seed(self.seed * 1009 + server_round))
            return sorted(node_ids[i] for i in order[:count].tolist())
        per_pass = math.ceil(len(node_ids) / count)
        walked, slot = divmod(server_round - 1, per_pass)
        order = torch.randperm(len(node_ids), generator=torch.Generator().manual_seed(self.seed * 1009 + 104729 * (walked + 1)))
        return sorted(node_ids[i] for i in order[slot * count : (slot + 1) * count].tolist())

    # ------------------------------------------------------------------ train
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, nodes: list[int]) -> Iterable[Message]:
        """First ``train.step`` message of the round for each of the round's sampled ``nodes``
        (:meth:`sample`, drawn once per round by the loop, which also refits CEM on them)."""
        content = {"config": config}
        if self.averages_encoders and len(arrays):
            content["encoder"] = arrays
        return [Message(RecordDict(dict(content)), node, "train.step", group_id=str(server_round)) for node in nodes]

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """SplitFed average of the round's encoders (when syncing) and sample-weighted metrics."""
        contents = [r.content for r in replies if r.has_content()]
        if not contents:
            return None, None
        weights = [float(c["metrics"]["num_examples"]) for c in contents]
        total = sum(weights)
        metrics = MetricRecord()
        for key in contents[0]["metrics"]:
            if key != "num_examples":
                metrics[key] = sum(float(c["metrics"][key]) * w for c, w in zip(contents, weights)) / total
        metrics["num_examples"] = total
        if not self.averages_encoders:
            return None, metrics
        average = average_states([from_record(c["encoder"]) for c in contents], weights)
        return to_record(average), metrics

    # ------------------------------------------------------------------ evaluate
    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        """Every client smashes the test split: each encoder is scored with the shared decoder.

        With SplitFed the clients first load the averaged encoder, the one the next round starts
        from, so the figure is the federation's model rather than each client's last local one.
        """
        content = {"config": config}
        if self.averages_encoders and len(arrays):
            content["encoder"] = arrays
        return [Message(RecordDict(dict(content)), node, "evaluate.test", group_id=str(server_round)) for node in self.evaluated(server_round, self.eligible(grid))]

    def evaluated(self, server_round: int, node_ids: list[int]) -> list[int]:
        """The ``ceil(fraction_evaluate * n)`` nodes evaluated after this round: all of them at
        1.0, else a reproducible uniform draw of its own (Flower's ``fraction_evaluate``)."""
        count = max(1, math.ceil(self.fraction_evaluate * len(node_ids)))
        if count >= len(node_ids):
            return list(node_ids)
        order = torch.randperm(len(node_ids), generator=torch.Generator().manual_seed(self.seed * 1009 + server_round + 15485863))
        return [node_ids[i] for i in sorted(order[:count].tolist())]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Per-client accuracy on the global test split and on the client's local test split
        (its own label distribution), each with mean, spread and extremes across clients."""
        per_client: dict[int, dict[str, float]] = {}
        for reply in replies:
            if not reply.has_content():
                continue
            pid = int(reply.content["config"]["partition_id"])
            test = from_record(reply.content["smashed"])
            local = from_record(reply.content["smashed_local"])
            scores = self.classify(test["z"], test["y"], pid)
            per_client[pid] = {"accuracy": scores["accuracy"], "loss": scores["loss"], "local_accuracy": self.classify(local["z"], local["y"], pid)["accuracy"]}
        if not per_client:
            return None
        metrics = MetricRecord({"loss_mean": sum(m["loss"] for m in per_client.values()) / len(per_client), "clients": len(per_client)})
        for name in ("accuracy", "local_accuracy"):
            values = torch.tensor([m[name] for m in per_client.values()], dtype=torch.float64)
            metrics[f"{name}_mean"] = float(values.mean())
            metrics[f"{name}_std"] = float(values.std(unbiased=False))
            metrics[f"{name}_min"] = float(values.min())
            metrics[f"{name}_max"] = float(values.max())
            for pid, m in sorted(per_client.items()):
                metrics[f"{name}_client_{pid}"] = m[name]
        return metrics

    # ------------------------------------------------------------------ CEM
    def combine_cem_centres(self, replies: Iterable[Message], server_round: int, reference: Tensor | None = None) -> Tensor:
        """Global initial centres from the clients' local k-means centres and counts.

        With secure aggregation the server holds only the sums of the clients' count-weighted
        centres and of their counts, so each slot's centre is the count-weighted average of the
        clients' centres in that slot (exact where local k-means was warm-started from the last
        global centres, which aligns the slots; on the first refit the slots of one class are
        unaligned and average towards the class mean, later refits separate them).

        With ``bounded`` uploads the clients sent counts and clipped residual sums about the
        ``reference`` (the last global centres, ``None`` at the first refit), and the centres are
        one Lloyd step from it (:func:`~fl_cem.cem.kmeans.lloyd_step_centres`), on the (unmasked) sum.
        """
        parts = [from_record(r.content["centres"]) for r in replies]
        if self.bounded:
            total = unmask_sum(parts, integers={"counts"}) if self.secure else {
                "counts": torch.stack([p["counts"] for p in parts]).sum(0), "sums": torch.stack([p["sums"].double() for p in parts]).sum(0)
            }
            generator = torch.Generator().manual_seed(self.seed + server_round)
            return lloyd_step_centres(total["counts"], total["sums"], reference, self.clusters_per_class, generator)
        if self.secure:
            total = unmask_sum(parts, integers={"counts"})
            counts = total["counts"].double()
            return (total["weighted"] / counts.clamp_min(1)[:, None]).float()
        return combine_centres(
            [p["centres"] for p in parts],
            [p["counts"] for p in parts],
            self.clusters_per_class,
            self.kmeans_iters,
            torch.Generator().manual_seed(self.seed + server_round),
        )

    def merge_cem_stats(self, replies: Iterable[Message], centres: Tensor) -> MixtureStats:
        """Exact global mixture statistics (moment matching) from the clients' local ones, taken
        about the ``centres`` the server sent (with secure aggregation: the decoded sum of the masked uploads)."""
        parts = [from_record(r.content["stats"]) for r in replies]
        if self.secure:
            total = unmask_sum(parts, integers={"counts"})
            dtype = centres.dtype
            merged = MixtureStats(centres.clone(), total["counts"], total["sums"].to(dtype), total["moments"].to(dtype))
        else:
            merged = MixtureStats.merge([MixtureStats.from_state_dict(part) for part in parts])
        return merged.feasible() if self.noised else merged
