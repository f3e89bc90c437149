"""The server's side of split learning, without any Flower types: the shared decoder."""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Any, Iterator, NamedTuple

import torch
from torch import Tensor, nn

from fl_cem.config import Config
from fl_cem.data import load_splits
from fl_cem.federated.averaging import average_states, federated_momentum, set_norm_momentum
from fl_cem.federated.hijack import FeatureSpaceHijack
from fl_cem.federated.recorder import Interceptor
from fl_cem.training.schedule import Position
from fl_cem.training.server import Server
from fl_cem.training.setup import build_model, build_server


class Chunk(NamedTuple):
    """One client's message of smashed batches in a wave (:meth:`SplitServer.serve_wave`)."""

    client: int
    z: Tensor
    labels: Tensor
    sizes: list[int]
    epochs: list[int]
    batches: list[int]


class SplitServer:
    """Hosts the decoder, serves smashed batches in the order the loop hands them over; its
    :class:`Server` records what it serves (``interceptor``, the curious server).

    SplitFed V1 (``federated.variant = splitfed-v1``) trains a copy of the decoder (and its
    optimizer) per client and averages the copies whenever the encoders are averaged; the
    shared ``shared`` server then hold the average, which evaluation uses.

    With vanilla split learning the decoder keeps one set of
    batch-norm running statistics per client. Every training batch comes from one client, so
    in train mode each decoder batch-norm layer normalises with that client's statistics; the
    running averages that evaluation uses must then be that client's too, or evaluation
    normalises N different feature spaces with their blend (docs/FEDERATED.md). The weights
    stay shared. With SplitFed there is one encoder and so one set of statistics.

    A malicious server (``malicious.attack = fsha``) holds a :class:`FeatureSpaceHijack`
    (``hijack``) with the test split as its public images, and :meth:`serve` returns its
    gradient instead of the decoder's; ``None`` on an honest server.
    """

    def __init__(self, cfg: Config, shape: tuple[int, int, int], num_classes: int, device: torch.device) -> None:
        self.cfg = cfg
        self.device = device
        channels = shape[0]
        # Normalisation lives in the encoder; the decoder's initial weights depend only on the seed.
        model = build_model(cfg, shape, num_classes, (0.0,) * channels, (1.0,) * channels)
        self.interceptor = Interceptor(cfg.attack.intercept_max if cfg.attack.intercept else 0, cfg.run.seed)
        self.shared: Server = build_server(cfg, model, device, "federated", self.interceptor)
        self.smashed_shape = model.smashed_shape
        self.norms = [m for m in self.shared.decoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self.per_client_norms = cfg.federated.variant == "vanilla"
        self.per_client_decoders = cfg.federated.variant == "splitfed-v1"
        self.copies: dict[int, Server] = {}
        self.averaged = 1
        """Clients whose decoder copies SplitFed V1 averages this round (their batch-norm momentum follows it)."""
        self.served: dict[int, int] = {}
        """Decoder steps taken in each local epoch (the warm-up's position)."""
        self.initial_norms = self._norm_buffers()
        self.client_norms: dict[int, list[Tensor]] = {}
        self.hijack: FeatureSpaceHijack | None = None
        if cfg.malicious.attack == "fsha":
            splits = load_splits(cfg.data, cfg.run.seed)
            self.hijack = FeatureSpaceHijack(cfg, splits.test.images, num_classes, splits.natural, self.smashed_shape, device)

    def _norm_buffers(self) -> list[Tensor]:
        return [b.clone() for m in self.norms for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]

    def parts_of(self, client: int) -> Server:
        """The decoder that serves ``client``: its own copy in SplitFed V1 (made from the average), else the shared one."""
        if not self.per_client_decoders:
            return self.shared
        if client not in self.copies:
            self.copies[client] = copy.deepcopy(self.shared, {id(self.interceptor): self.interceptor})  # one recorder for all
            set_norm_momentum(self.copies[client].decoder, federated_momentum(self.averaged))
        return self.copies[client]

    def start_round(self, clients: int) -> None:
        """``clients`` train this round: SplitFed V1's copies keep batch-norm statistics at :func:`federated_momentum`."""
        self.averaged = clients
        if self.hijack is not None:
            self.hijack.start_round()
        for parts in self.copies.values():
            parts.decoder.load_state_dict(self.shared.decoder.state_dict())  # every copy starts the round from the average
            set_norm_momentum(parts.decoder, federated_momentum(clients))

    def average_decoders(self, weights: dict[int, float]) -> None:
        """SplitFed V1's FedAvg of the decoder copies of ``weights``' clients, into the shared decoder and those copies."""
        clients = [c for c in sorted(weights) if c in self.copies]
        if not self.per_client_decoders or not clients:
            return
        average = average_states([self.copies[c].decoder.state_dict() for c in clients], [weights[c] for c in clients])
        self.shared.decoder.load_state_dict(average)
        for client in clients:  # a client already done this round keeps its copy for the round's average
            self.copies[client].decoder.load_state_dict(average)

    @contextmanager
    def statistics_of(self, client: int) -> Iterator[None]:
        """Decoder batch-norm running statistics of ``client`` for the duration of the block."""
        if not self.per_client_norms:
            yield
            return
        buffers = [b for m in self.norms for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]
        for target, saved in zip(buffers, self.client_norms.get(client, self.initial_norms)):
            target.copy_(saved)
        try:
            yield
        finally:
            self.client_norms[client] = self._norm_buffers()

    def serve(
        self, z: Tensor, labels: Tensor, sizes: list[int], epochs: list[int], client: int, round_: int, batches: list[int], epoch_batches: int
    ) -> tuple[Tensor, dict[str, float]]:
        """Decoder steps for a chunk of batches from one client; returns dL/dz for each sample.

        ``epoch_batches`` is the number of batches all of the round's clients send in one local
        epoch: the decoder's warm-up runs over its own first pass over the data (its
        ``epoch_batches`` steps), not over one client's, which at N = 100 is a single batch.
        With one client this is the centralized schedule step for step. A hijacking server
        steps its decoder all the same (the accuracy it reports stays plausible) but returns
        :meth:`FeatureSpaceHijack.step`'s gradient.
        """
        grads, loss, correct = [], 0.0, 0
        offset = 0
        for size, epoch, batch in zip(sizes, epochs, batches):
            zb = z[offset : offset + size].to(self.device)
            yb = labels[offset : offset + size].to(self.device)
            offset += size
            parts = self.parts_of(client)
            self.served[epoch] = self.served.get(epoch, 0) + 1
            source = (client, round_, epoch, batch)
            at = Position(epoch, self.served[epoch] - 1, epoch_batches)
            with self.statistics_of(client):
                grad, metrics = parts.step(zb, yb, at, source)
            if self.hijack is not None:
                grad = self.hijack.step(zb, source, parts.schedule.lr(at))
            grads.append(grad)
            loss += float(metrics["loss"]) * size
            correct += int(metrics["correct"])
        return torch.cat(grads), {"loss_sum": loss, "correct": float(correct), "count": float(offset)}

    def serve_wave(self, wave: list[Chunk], round_: int, epoch_batches: int) -> tuple[dict[int, Tensor], dict[str, float]]:
        """``federated.server-mix``: serve one lockstep wave's batches, pooled and re-cut; with
        ``server-batch`` alone, a group of a wave's consecutive batches (:mod:`~fl_cem.federated.waves`).

        Under label skew every client batch holds a few classes, and a decoder stepping on one
        client's batch after another is pulled from class to class: centrally, one model fed
        the same sequence of ten Dirichlet-0.5 clients' batches reaches 0.130 on CIFAR-10 where
        shuffled batches reach 0.292 (docs/FEDERATED.md). Here the server shuffles the wave's
        samples (each client's chunk, recorded first as it arrived) and takes as many decoder
        steps, on as many batches, as it was sent, each a mix of every client of the wave; every
        client gets back the gradient of its own samples, in its order. With
        ``federated.server-batch`` it steps on pieces of at most that many images instead, and
        scales each sample's gradient from the mean over its piece to the mean over its client's
        batch, so a client's step does not depend on how the server cut the wave. The warm-up
        advances by the client batches a step completes. Without ``server-mix`` the group keeps
        its order and is cut into steps of at least ``server-batch`` images: a client batch of
        that size sent alone (``chunk = 1``) is a step of its own, exactly as :meth:`serve` takes it.
        SplitFed V2 only: one shared decoder.
        """
        for chunk in wave:
            offset = 0
            for size, epoch, batch in zip(chunk.sizes, chunk.epochs, chunk.batches):
                self.interceptor.offer(chunk.z[offset : offset + size], chunk.labels[offset : offset + size], chunk.client, round_, epoch, batch)
                offset += size
        z = torch.cat([c.z for c in wave]).to(self.device)
        labels = torch.cat([c.labels for c in wave]).to(self.device)
        at = []  # where each client batch of the wave sits in its epoch
        for epoch in (epoch for c in wave for epoch in c.epochs):
            self.served[epoch] = self.served.get(epoch, 0) + 1
            at.append(Position(epoch, self.served[epoch] - 1, epoch_batches))
        fed = self.cfg.federated
        if fed.server_mix:
            steps = -(-len(z) // fed.server_batch) if fed.server_batch else len(at)
            sources = tuple((c.client, c.epochs[0], c.batches[0]) for c in wave)
            order = torch.randperm(len(z), generator=torch.Generator().manual_seed(hash((self.cfg.run.seed, round_, sources)) % 2**63))
        else:
            steps = max(1, len(z) // fed.server_batch)
            order = torch.arange(len(z))
        # each sample's client batch size, to rescale its gradient when the server re-cut the wave
        batch_of = torch.cat([torch.full((size,), float(size)) for c in wave for size in c.sizes]).to(z.device) if fed.server_batch else None
        grads = torch.empty_like(z)
        loss, correct = 0.0, 0
        for step, piece in enumerate(torch.tensor_split(order, steps)):
            grad, metrics = self.shared.step(z[piece], labels[piece], at[max(1, (step + 1) * len(at) // steps) - 1])
            if batch_of is not None:
                grad = grad * (len(piece) / batch_of[piece]).view(-1, *[1] * (grad.dim() - 1))
            grads[piece] = grad
            loss += float(metrics["loss"]) * len(piece)
            correct += int(metrics["correct"])
        out, offset = {}, 0
        for chunk in wave:
            out[chunk.client] = grads[offset : offset + len(chunk.z)]
            offset += len(chunk.z)
        return out, {"loss_sum": loss, "correct": float(correct), "count": float(len(z))}

    def classify(self, z: Tensor, labels: Tensor, client: int) -> dict[str, float]:
        """Accuracy and loss of the decoder on one client's smashed evaluation data (its own statistics),
        in the evaluation batches centralized training classifies in (:meth:`Server.classify`)."""
        size = self.cfg.train.eval_batch_size
        batches = ((z[i : i + size].to(self.device), labels[i : i + size].to(self.device)) for i in range(0, len(z), size))
        with self.statistics_of(client):
            return self.shared.classify(batches)

    def state_dict(self) -> dict[str, Any]:
        return {
            "shared": self.shared.state_dict(),
            "interceptor": self.interceptor.state_dict(),
            "client_norms": {str(client): buffers for client, buffers in self.client_norms.items()},
            "served": {str(epoch): count for epoch, count in self.served.items()},
            "copies": {str(c): p.state_dict() for c, p in self.copies.items()},
            **({"hijack": self.hijack.state_dict()} if self.hijack is not None else {}),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.shared.load_state_dict(state["shared"])
        self.client_norms = {int(client): list(buffers) for client, buffers in state["client_norms"].items()}
        self.served = {int(epoch): int(count) for epoch, count in state["served"].items()}
        for client, saved in state["copies"].items():
            self.parts_of(int(client)).load_state_dict(saved)
        self.interceptor.load_state_dict(state["interceptor"])
        if self.hijack is not None:
            self.hijack.load_state_dict(state["hijack"])
