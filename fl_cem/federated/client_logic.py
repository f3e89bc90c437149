"""What a split-learning client does with each message, without any Flower types.

A ClientApp object does not survive between messages, so every handler starts from the state
saved in ``context.state`` (encoder weights, optimizer, defense, CEM statistics and a cursor
into the local data) and ends by saving it again. The torch modules themselves are built once
per process and partition and only re-loaded, because building VGG11 per batch would cost more
than the batch.

One training message carries the gradients for the batches the client sent last time and asks
for the next ``chunk`` batches, so a batch costs one round trip (the gradient is piggy-backed
on the next request). With ``chunk = 1`` this is exact split learning: the same computation as
:func:`fl_cem.training.step.train_step`. With ``chunk > 1`` the client smashes several batches
before it receives any gradient, so batches after the first are smashed by an encoder that is
up to ``chunk - 1`` steps stale, and the recomputed forward pass (with the updated encoder) no
longer matches the features the server differentiated: faster, not exact.
"""

from __future__ import annotations

import copy
import math
import json
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor

from fl_cem.cem import MixtureStats
from fl_cem.config import Config
from fl_cem.data import BatchLoader, DataSplits, load_splits, partition_indices
from fl_cem.data.partition import local_test_indices
from fl_cem.federated.averaging import federated_momentum, set_norm_momentum
from fl_cem.federated.client_cem import CemUploads
from fl_cem.federated.detection import CHECKED, DISPERSION, norm_dispersion, round_verdict
from fl_cem.models.split import SplitModel
from fl_cem.training.client import Client, global_refit_due
from fl_cem.training.schedule import Position
from fl_cem.training.setup import build_client, build_model, client_batch_size, train_loader
from fl_cem.training.step import batch_seed


@dataclass
class Cursor:
    """Where the client is in its round: the next batch to smash and the batches awaiting gradients."""

    epoch: int = 0
    batch: int = 0
    end_epoch: int = 0
    pending: list[tuple[int, int]] = field(default_factory=list)
    sums: dict[str, float] = field(default_factory=dict)
    steps: int = 0
    since_sync: int = 0
    """Batches smashed since the round started or the encoder was last averaged."""
    averaged: int = 1
    """Clients whose encoders this round's averages combine (1: none, vanilla)."""
    refitted: int = -1
    """The epoch whose global CEM mixture the client holds (``cem.federation = global``)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "batch": self.batch,
            "end_epoch": self.end_epoch,
            "pending": [list(p) for p in self.pending],
            "sums": dict(self.sums),
            "steps": self.steps,
            "since_sync": self.since_sync,
            "averaged": self.averaged,
            "refitted": self.refitted,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Cursor:
        pending = [tuple(p) for p in d["pending"]]
        return cls(d["epoch"], d["batch"], d["end_epoch"], pending, dict(d["sums"]), d["steps"], d["since_sync"], d["averaged"], d["refitted"])  # type: ignore[arg-type]


@dataclass
class Template:
    """Modules built once per (config, partition) in a process; state is loaded into them per message."""

    client: Client
    loader: BatchLoader
    local_test: Tensor
    """Positions into the test split with this client's label distribution."""
    initial: dict[str, Any]


@dataclass
class Reply:
    """A client's answer to one message in plain types; the ClientApp packs it into records."""

    config: dict[str, Any] = field(default_factory=dict)
    """Scalars and lists: the reply's ``ConfigRecord`` (the app adds the partition id)."""
    arrays: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    """Tensors by record name: an ``ArrayRecord`` each."""
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    """Numbers by record name: a ``MetricRecord`` each."""
    state: bool = False
    """Whether the reply carries the client's state: where a round ends, which the server checkpoints."""


@lru_cache(maxsize=4)
def _splits(config_json: str) -> DataSplits:
    cfg = Config.from_flat(json.loads(config_json))
    return load_splits(cfg.data, cfg.run.seed)


@lru_cache(maxsize=4)
def _device_splits(config_json: str, device: str) -> DataSplits:
    """The splits uploaded to ``device`` once per process, shared by every client it serves."""
    splits = _splits(config_json)
    return replace(splits, train=splits.train.to(device), val=splits.val.to(device), test=splits.test.to(device))


@lru_cache(maxsize=4)
def _partitions(config_json: str, num_partitions: int) -> list[Tensor]:
    """Every client's partition, drawn once per process: drawing them costs O(N) partitioner
    calls (seconds at N = 1,000), so drawing them per client made the run O(N^2) (README, scale)."""
    cfg = Config.from_flat(json.loads(config_json))
    return partition_indices(_splits(config_json).train.labels, cfg.partition, num_partitions, cfg.run.seed)


@lru_cache(maxsize=4)
def _model(config_json: str, device: str) -> SplitModel:
    """The split model built once per process: every client starts from the same ``run.seed``
    weights, and building VGG11 (its decoder's initialisation above all) cost 50 ms per client."""
    cfg = Config.from_flat(json.loads(config_json))
    splits = _device_splits(config_json, device)
    return build_model(cfg, splits.shape, splits.num_classes, splits.mean, splits.std)


def mixture_size(cfg: Config, partitions: list[Tensor], partition_id: int) -> int:
    """``N`` of Eq. 5 for a client's CEM: the number of samples its mixture describes.

    With ``cem.federation = global`` the mixture is merged from the whole federation's
    statistics, so its cluster shares are of the federation's data, and the official blend of a
    batch's variance with the mixture's (``class_size = N / C``) must weigh a batch against the
    federation's class sizes, as centralized training does. A client's own partition size in its
    place made each batch look ten times its share of the data at ten clients: on
    ``cifar10_subset_cpu.toml`` the blend's weight on the batch was 0.5-0.8 under Dirichlet 0.5
    (0.99 IID) where centralized training uses 0.14, so the CEM gradient was 4-7 times the
    centralized one, at a cost in accuracy (docs/FEDERATED.md). With ``local`` each client's
    mixture is its own partition's. With client sampling (``federated.fraction-train`` < 1) a
    refit merges only the sampled clients' statistics: ``N`` is still the federation's, whose
    distribution that sample estimates, so the mixture is trusted as if fitted on all of it.
    """
    if cfg.cem.federation == "global":
        return sum(len(p) for p in partitions)
    return len(partitions[partition_id])


@lru_cache(maxsize=256)
def _template(config_json: str, partition_id: int, num_partitions: int, device: str) -> Template:
    cfg = Config.from_flat(json.loads(config_json))
    splits = _device_splits(config_json, device)
    partitions = _partitions(config_json, num_partitions)
    indices = partitions[partition_id].sort().values
    batch_size = client_batch_size(cfg, [len(p) for p in partitions], partition_id)
    shared = _model(config_json, device)
    model = replace(shared, encoder=copy.deepcopy(shared.encoder))  # the client's own encoder; the decoder is the server's
    client = build_client(cfg, model, splits.num_classes, mixture_size(cfg, partitions, partition_id), torch.device(device), "federated", clients=num_partitions)
    loader = train_loader(splits.train, cfg, splits.natural, torch.device(device), cfg.run.seed + 7919 * partition_id, indices, batch_size)
    local_test = local_test_indices(splits.test.labels, splits.train.labels[indices.to(splits.train.labels.device)], splits.num_classes, cfg.run.seed, partition_id)
    template = Template(client, loader, local_test, {})
    template.initial = copy.deepcopy(client.state_dict())
    return template


class SplitClient(CemUploads):
    """One federated client for the duration of one message: a :class:`Client`, its partition and its cursor."""

    def __init__(self, cfg: Config, partition_id: int, num_partitions: int, device: torch.device, state: dict[str, Any] | None) -> None:
        if not 0 <= partition_id < num_partitions:
            raise ValueError(f"partition-id {partition_id} is outside 0..{num_partitions - 1}")
        self.cfg = cfg
        self.partition_id = partition_id
        self.num_partitions = num_partitions
        self.device = device
        config_json = json.dumps(cfg.to_flat(), sort_keys=True)
        self.splits = _device_splits(config_json, str(device))
        template = _template(config_json, partition_id, num_partitions, str(device))
        self.client = template.client
        self.loader = template.loader
        self.local_test = template.local_test
        self.client.load_state_dict(state["client"] if state else template.initial)
        self.cem = self.client.cem
        self.cursor = Cursor.from_dict(state["cursor"]) if state else Cursor()
        set_norm_momentum(self.client.encoder, federated_momentum(self.cursor.averaged))

    def state(self) -> dict[str, Any]:
        """Everything needed to continue: the client's one schema and the cursor (``context.state``, server checkpoints)."""
        return {"client": self.client.state_dict(), "cursor": self.cursor.to_dict()}

    def encoder_state(self) -> dict[str, Tensor]:
        """The encoder's weights and batch-norm statistics, for the federation's average."""
        return self.client.encoder.state_dict()

    @property
    def num_examples(self) -> int:
        """Training examples in the partition: the weight of this client's encoder in averages."""
        return len(self.loader.indices)

    def partition_batches(self) -> BatchLoader:
        """The whole local partition in fixed order, unaugmented: what mixtures are fitted on (no copy of it is made)."""
        return BatchLoader(self.splits.train, self.cfg.train.eval_batch_size, self.device, shuffle=False, indices=self.loader.indices)

    # ------------------------------------------------------------------ queries
    def hello(self) -> dict[str, Any]:
        """What the server needs to build the decoder and weight aggregates."""
        return {
            "partition_id": self.partition_id,
            "num_partitions": self.num_partitions,
            "num_examples": self.num_examples,
            "batches": len(self.loader),
            "pixel_var": self.splits.pixel_var,
            "pixel_entropy": self.splits.pixel_entropy,
            "num_classes": self.splits.num_classes,
            "shape": list(self.splits.shape),
        }

    def features(self) -> tuple[Tensor, Tensor]:
        """Noise-free features of the whole local partition (CEM refits)."""
        return self.client.features(self.partition_batches(), self.cfg.cem.before_defense)

    def fittable_features(self) -> tuple[Tensor, Tensor]:
        """Local features of the classes this client holds at least ``k`` samples of (:meth:`Client.fittable_features`)."""
        return self.client.fittable_features(self.partition_batches())

    def evaluate(self, split: str, seed: int) -> tuple[Tensor, Tensor]:
        """Smashed data of a whole split (``test``, ``val`` or ``local_test``), noise on, as deployed (the server classifies it)."""
        data = self.splits.test.subset(self.local_test) if split == "local_test" else getattr(self.splits, split)
        loader = BatchLoader(data, self.cfg.train.eval_batch_size, self.device, shuffle=False)
        out = list(self.client.smashed(loader, seed))
        return torch.cat([z for z, _ in out]), torch.cat([y for _, y in out])

    def cem_report(self, seed: int) -> dict[str, float]:
        """Local bound; with lambda = 0 the mixture is fitted here, for measurement only.

        With lambda > 0 and no mixture yet (the official variant's first epoch) there is nothing
        to report: a fit here would become the warm start of the first training refit.
        """
        if self.cfg.cem.enabled and not self.cem.fitted:
            return {}
        if not self.cfg.cem.enabled:
            z, y = self.fittable_features()
            if not len(y):
                return {}  # no class with k samples here: nothing to fit, nothing to report
            self.cem.refit(z, y, torch.Generator().manual_seed(seed))
        return self.cem.report(math.prod(self.splits.shape), self.splits.pixel_var, self.splits.pixel_entropy)

    # ------------------------------------------------------------------ training
    def start_round(self, first_epoch: int, epochs: int, clients: int) -> None:
        """Begin ``epochs`` local epochs; ``clients`` train this round (their encoders' average is
        what evaluation sees, so batch-norm statistics move at :func:`federated_momentum`)."""
        averaged = clients if self.cfg.federated.averages_encoders else 1
        self.cursor = Cursor(epoch=first_epoch, batch=0, end_epoch=first_epoch + epochs, averaged=averaged)
        set_norm_momentum(self.client.encoder, federated_momentum(averaged))

    def apply_gradients(self, grads: Tensor) -> None:
        """Step on the pending batches with the server's gradients (:meth:`Client.step` recomputes each forward pass),
        measuring the spread of each gradient's per-sample norms first (``fl_cem/federated/detection.py``)."""
        offset = 0
        for epoch, batch in self.cursor.pending:
            self.loader.set_epoch(epoch)
            x, y = self.loader.batch(batch)
            seed = batch_seed(self.cfg.run.seed, epoch, batch, self.partition_id)
            grad = grads[offset : offset + len(y)]
            offset += len(y)
            dispersion = norm_dispersion(grad)
            if dispersion is not None:
                self.cursor.sums[DISPERSION] = self.cursor.sums.get(DISPERSION, 0.0) + dispersion
                self.cursor.sums[CHECKED] = self.cursor.sums.get(CHECKED, 0.0) + 1
            metrics = self.client.step(x, y, seed, grad, Position(epoch, batch, len(self.loader)))
            for key, value in metrics.items():
                self.cursor.sums[key] = self.cursor.sums.get(key, 0.0) + float(value)
            self.cursor.steps += 1
        if offset != len(grads):
            raise ValueError(f"server sent gradients for {len(grads)} samples, the client expected {offset}")
        self.cursor.pending = []

    @property
    def done(self) -> bool:
        return self.cursor.epoch >= self.cursor.end_epoch

    @property
    def averaging_due(self) -> bool:
        """SplitFed averages the encoders here: a sync period of batches is smashed since the last average."""
        period = self.cfg.federated.sync_period(len(self.loader))
        return period > 0 and self.cursor.since_sync >= period

    @property
    def global_refit_due(self) -> bool:
        """An epoch starts at which the server refits the global mixture (:func:`global_refit_due`)."""
        epoch = self.cursor.epoch
        return self.cursor.batch == 0 and epoch != self.cursor.refitted and global_refit_due(self.cfg.cem, epoch)

    @property
    def _at_sync_point(self) -> bool:
        return self.averaging_due or (self.global_refit_due and not self.done)

    @property
    def sync_due(self) -> bool:
        """The client pauses within the round for the federation (an encoder average, a global CEM refit, or both)."""
        return self._at_sync_point and not self.done and not self.cursor.pending

    def load_mixture(self, stats: MixtureStats) -> None:
        """Take the server's global mixture for the epoch the cursor is at."""
        self.cem.load_stats(stats)
        self.cursor.refitted = self.cursor.epoch

    def load_encoder(self, state: dict[str, Tensor]) -> None:
        """Take the federation's average encoder (round start or a sync within the round)."""
        self.client.encoder.load_state_dict(state)
        self.cursor.since_sync = 0

    def next_chunk(self, chunk: int) -> tuple[Tensor, Tensor, list[int], list[int], list[int]]:
        """Smash the next ``chunk`` batches (no graph kept, never past a sync point); returns z,
        labels, and each batch's epoch, size and index in its epoch (the batches awaiting gradients)."""
        zs, ys, epochs, sizes = [], [], [], []
        while len(zs) < chunk and not self.done and not self._at_sync_point:
            epoch, batch = self.cursor.epoch, self.cursor.batch
            if batch == 0:  # a local refit (Algorithm 1, lines 4-5), as centralized training does
                self.client.epoch_start(epoch, self.partition_batches(), self.cfg.run.seed + epoch)
            self.loader.set_epoch(epoch)
            x, y = self.loader.batch(batch)
            z = self.client.smash(x, batch_seed(self.cfg.run.seed, epoch, batch, self.partition_id))
            zs.append(z)
            ys.append(y)
            epochs.append(epoch)
            sizes.append(len(y))
            self.cursor.pending.append((epoch, batch))
            self.cursor.since_sync += 1
            self.cursor.batch += 1
            if self.cursor.batch == len(self.loader):
                self.cursor.epoch += 1
                self.cursor.batch = 0
        return torch.cat(zs), torch.cat(ys), epochs, sizes, [b for _, b in self.cursor.pending]

    def round_metrics(self) -> dict[str, float]:
        """Per-step means of the round's sums, and the hijack check's verdict on the round."""
        steps = max(self.cursor.steps, 1)
        means = {key: value / steps for key, value in self.cursor.sums.items() if key not in (DISPERSION, CHECKED)}
        return means | round_verdict(self.cursor.sums, self.cfg.malicious.alarm)

    # ------------------------------------------------------------------ messages
    def train_step(
        self, chunk: int, grads: Tensor | None = None, encoder: dict[str, Tensor] | None = None,
        mixture: dict[str, Tensor] | None = None, start: tuple[int, int, int] | None = None,
    ) -> Reply:
        """One ``train.step``: take what the server sent, in this order (the federation's
        ``encoder``; at a round's ``start`` its first epoch, epochs and client count; the global
        ``mixture``; the last chunk's ``grads``), then answer ``done`` (round metrics, encoder,
        state), ``sync`` (paused for the federation, with the encoder) or the next ``chunk``."""
        if encoder is not None:
            self.load_encoder(encoder)
        if start is not None:
            self.start_round(*start)
        if mixture is not None:
            self.load_mixture(MixtureStats.from_state_dict(mixture))
        if grads is not None:
            self.apply_gradients(grads)
        examples = {"num_examples": float(self.num_examples)}
        if self.done:
            metrics = {"metrics": {**examples, **self.round_metrics()}}
            return Reply({"status": "done"}, {"encoder": self.encoder_state()}, metrics, state=True)
        if self.sync_due:
            config = {"status": "sync", "average": self.averaging_due, "refit": self.global_refit_due, "epoch": self.cursor.epoch}
            return Reply(config, {"encoder": self.encoder_state()}, {"metrics": examples})
        z, y, epochs, sizes, batches = self.next_chunk(chunk)
        return Reply({"status": "batch", "epochs": epochs, "sizes": sizes, "batches": batches}, {"smashed": {"z": z, "y": y}})

    def evaluate_round(self, seed: int, encoder: dict[str, Tensor] | None = None) -> Reply:
        """``evaluate.test``: with the federation's ``encoder`` (when sent), the smashed test split
        and local test split (the server classifies them), the local bound and the end-of-round state."""
        if encoder is not None:
            self.load_encoder(encoder)
        z, y = self.evaluate("test", seed)
        z_local, y_local = self.evaluate("local_test", seed)
        smashed = {"smashed": {"z": z, "y": y}, "smashed_local": {"z": z_local, "y": y_local}}
        return Reply(arrays=smashed, metrics={"cem": self.cem_report(seed)}, state=True)
