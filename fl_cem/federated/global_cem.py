"""The server's side of ``cem.federation = global``: the federated refit and the merged mixture.

Before each epoch that refits (``cem.refit-every``, the schedule centralized training follows),
the sampled clients fit local k-means centres, the strategy clusters them into global centres,
the clients return per-cluster counts, sums and second moments about those, and the strategy
merges them into the exact moment-matched mixture every client then trains its L_C against.
What the server received on the way is the curious server's record of this channel
(:class:`StatsRecorder`); the mixture also gives the federation's bound in every round's report.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

from fl_cem.cem import ConditionalEntropy, MixtureStats
from fl_cem.config import Config
from fl_cem.federated.exchange import TooFewClients
from fl_cem.federated.stats_noise import privacy_report
from fl_cem.federated.stats_recorder import StatsRecorder
from fl_cem.federated.wire import from_record, to_record
from fl_cem.training.client import global_refit_due
from strategies.split_strategy import SplitLearningStrategy


class GlobalCem:
    """The merged mixture across rounds, the refit that produces it, and what the server saw of it.

    ``gather`` sends messages and returns the replies in partition order; ``partition`` maps a
    node id to its partition id (both :class:`~fl_cem.federated.server_loop.FederatedRun`'s).
    """

    def __init__(
        self, cfg: Config, strategy: SplitLearningStrategy, gather: Callable[[Iterable[Message]], list[Message]], partition: Callable[[int], int]
    ) -> None:
        self.cfg = cfg
        self.strategy = strategy
        self.gather = gather
        self.partition = partition
        self.mixture: MixtureStats | None = None
        self.recorder = StatsRecorder(cfg.attack.intercept_stats_max if cfg.attack.intercept_stats else 0, cfg.cem.secure_aggregation)

    def refit(self, server_round: int, sampled: Iterable[int], epoch: int, encoder: ArrayRecord | None, fitted_with: dict[str, torch.Tensor] | None) -> None:
        """Federated k-means before local epoch ``epoch``: local centres -> global centres -> exact
        merged statistics, on the clients' current encoders or on ``encoder``, which they load
        first; ``fitted_with`` is that encoder where the server holds it, for the record.

        Both queries name the refit's clients and a nonce (secure aggregation masks with them)."""
        sampled = list(sampled)
        records = {"centres": to_record({"centres": self.mixture.centres})} if self.mixture is not None else {}
        records |= {"encoder": encoder} if encoder is not None else {}
        sum_cfg = {"peers": sorted(self.partition(n) for n in sampled), "nonce": f"{server_round}|{epoch}"}
        seed_cfg = ConfigRecord({"seed": self.cfg.run.seed + epoch, **sum_cfg})
        replies = self.gather([Message(RecordDict({"config": seed_cfg, **records}), n, "query.cem_centres") for n in sampled])
        self.check_replies(server_round, replies, len(sampled))
        centres = self.strategy.combine_cem_centres(replies, server_round, self.mixture.centres if self.mixture is not None else None)
        stats_replies = self.gather(
            [Message(RecordDict({"config": ConfigRecord(sum_cfg), "centres": to_record({"centres": centres})}), n, "query.cem_stats") for n in sampled]
        )
        self.check_replies(server_round, stats_replies, len(sampled))
        self.mixture = self.strategy.merge_cem_stats(stats_replies, centres)
        self.recorder.offer(
            server_round, epoch, centres,
            {self.partition(r.metadata.src_node_id): from_record(r.content["centres"]) for r in replies},
            {self.partition(r.metadata.src_node_id): from_record(r.content["stats"]) for r in stats_replies},
            self.mixture,
            fitted_with,
        )

    def check_replies(self, server_round: int, replies: list[Message], asked: int) -> None:
        """Enough clients answered a refit query; with secure aggregation all of them (no dropout recovery)."""
        needed = asked if self.cfg.cem.secure_aggregation else max(1, self.cfg.federated.min_clients)
        if len(replies) < needed:
            why = "cem.secure-aggregation needs every client asked (their masks cancel only together)" if self.cfg.cem.secure_aggregation else f"federated.min-clients is {self.cfg.federated.min_clients}"
            raise TooFewClients(f"round {server_round}: {len(replies)} of {asked} clients answered the CEM refit; {why}")

    def privacy(self) -> dict[str, Any]:
        """What ``cem.stats-noise`` guarantees a client's samples on this channel, per release and
        over the refits the config schedules (:func:`~fl_cem.federated.stats_noise.privacy_report`)."""
        refits = sum(global_refit_due(self.cfg.cem, epoch) for epoch in range(self.cfg.total_epochs("federated")))
        return privacy_report(self.cfg.cem, refits)

    def summary(self, replies: list[Message], num_classes: int, pixels: int, pixel_var: float, pixel_entropy: float) -> dict[str, float]:
        """Per-client bounds (reported with the evaluation ``replies``), their mean, and the merged mixture's."""
        out: dict[str, float] = {}
        per_client = {int(r.content["config"]["partition_id"]): dict(r.content["cem"]) for r in replies}
        for pid, report in sorted(per_client.items()):
            if "hxz_relative" in report:
                out[f"client_{pid}_hxz_relative"] = float(report["hxz_relative"])
        for key in sorted({key for report in per_client.values() for key in report}):
            values = [float(r[key]) for r in per_client.values() if key in r]
            out[f"mean_{key}"] = sum(values) / len(values)
        if self.mixture is not None:
            merged = ConditionalEntropy(self.cfg.cem, self.cfg.noise.sigma, num_classes, int(self.mixture.counts.sum()))
            merged.load_stats(self.mixture)
            for key, value in merged.report(pixels, pixel_var, pixel_entropy).items():
                out[f"global_{key}"] = value
        return out
