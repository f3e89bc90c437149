"""The curious server: keeps a bounded, uniform sample of the smashed data that reached it.

Reservoir sampling (Vitter's algorithm R) keeps every arriving sample with equal probability
whatever the run length, in memory bounded by ``attack.intercept-max``. Each kept sample
carries what the server saw (features, label) and where it came from (client, round, epoch,
batch, position in batch), which lets the attack harness replay the client's deterministic
data order to find the ground-truth image for scoring. The images themselves never reach the
server.

Two reservoirs of that size: one over the whole run, and one over the latest round only. The
attacks score on a victim's last round (the encoder they hold is the final one), and a sample
of the whole run holds few of those rows: ten clients for ten rounds left 3 of 2,048 rows to
client 0's last round in the CPU-scale Table 1, so its train-mode attacks were scored on three
images. The latest round's reservoir gives a victim about ``capacity / clients`` of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fl_cem.reporting.run_dir import atomic_torch_save

FIELDS = ("client", "round", "epoch", "batch", "position")


class Reservoir:
    """A uniform sample of at most ``capacity`` rows, each with its provenance (``FIELDS``)."""

    def __init__(self, capacity: int, seed: int) -> None:
        self.capacity = capacity
        self.seen = 0
        self.generator = torch.Generator().manual_seed(seed)
        self.z: Tensor | None = None
        self.labels = torch.zeros(capacity, dtype=torch.long)
        self.meta = torch.zeros(capacity, len(FIELDS), dtype=torch.long)

    def offer(self, z: Tensor, labels: Tensor, source: tuple[int, int, int, int]) -> None:
        """Consider every sample of one batch (``z`` on the CPU) sent from ``source`` (client, round, epoch, batch)."""
        if self.z is None:
            self.z = torch.zeros(self.capacity, *z.shape[1:], dtype=z.dtype)
        for position in range(len(z)):
            slot = self.seen if self.seen < self.capacity else int(torch.randint(self.seen + 1, (1,), generator=self.generator))
            self.seen += 1
            if slot < self.capacity:
                self.z[slot] = z[position]
                self.labels[slot] = labels[position]
                self.meta[slot] = torch.tensor([*source, position])

    def state_dict(self) -> dict[str, Any]:
        kept = min(self.seen, self.capacity)
        return {
            "z": self.z[:kept].clone() if self.z is not None else torch.zeros(0),
            "labels": self.labels[:kept].clone(),
            "meta": self.meta[:kept].clone(),
            "fields": list(FIELDS),
            "seen": self.seen,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        z = state["z"]
        kept = len(z)
        self.seen = int(state["seen"])
        self.generator.set_state(state["generator"])
        self.z = None
        if kept:
            self.z = torch.zeros(self.capacity, *z.shape[1:], dtype=z.dtype)
            self.z[:kept] = z
        self.labels[:kept] = state["labels"]
        self.meta[:kept] = state["meta"]


class Interceptor:
    """What a curious server keeps: a reservoir over the whole run and one over its latest round."""

    def __init__(self, capacity: int, seed: int) -> None:
        self.seed = seed
        self.whole = Reservoir(capacity, seed)
        self.latest = Reservoir(capacity, seed + 1)
        self.latest_round = -1

    @property
    def z(self) -> Tensor | None:
        """The whole run's kept rows (TensorBoard's view of what the server sees)."""
        return self.whole.z

    def offer(self, z: Tensor, labels: Tensor, client: int, round_: int, epoch: int, batch: int) -> None:
        """Consider every sample of one batch for both reservoirs."""
        if self.whole.capacity == 0:
            return
        if round_ != self.latest_round:  # a new round: its reservoir starts empty (seeded by the round, resume-exact)
            self.latest = Reservoir(self.whole.capacity, self.seed + 1 + round_)
            self.latest_round = round_
        z = z.detach().cpu()
        self.whole.offer(z, labels, (client, round_, epoch, batch))
        self.latest.offer(z, labels, (client, round_, epoch, batch))

    def state_dict(self) -> dict[str, Any]:
        """The whole run's reservoir at the top level (the layout before the latest round had its
        own), the latest round's under ``latest``."""
        return {**self.whole.state_dict(), "latest": self.latest.state_dict(), "latest_round": self.latest_round}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.whole.load_state_dict(state)
        if "latest" in state:  # checkpoints written before it existed have none: it fills from the next round
            self.latest.load_state_dict(state["latest"])
            self.latest_round = int(state["latest_round"])

    def save(self, path: Path) -> None:
        atomic_torch_save(self.state_dict(), path)
