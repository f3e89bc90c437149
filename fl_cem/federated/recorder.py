"""The curious server: keeps a bounded, uniform sample of the smashed data that reached it.

Reservoir sampling (Vitter's algorithm R) keeps every arriving sample with equal probability
whatever the run length, in memory bounded by ``attack.intercept-max``. Each kept sample
carries what the server saw (features, label) and where it came from (client, round, epoch,
batch, position in batch), which lets the attack harness replay the client's deterministic
data order to find the ground-truth image for scoring. The images themselves never reach the
server.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from fl_cem.reporting.run_dir import atomic_torch_save

FIELDS = ("client", "round", "epoch", "batch", "position")


class Interceptor:
    """Reservoir of intercepted smashed data with provenance."""

    def __init__(self, capacity: int, seed: int) -> None:
        self.capacity = capacity
        self.seen = 0
        self.generator = torch.Generator().manual_seed(seed)
        self.z: Tensor | None = None
        self.labels = torch.zeros(capacity, dtype=torch.long)
        self.meta = torch.zeros(capacity, len(FIELDS), dtype=torch.long)

    def offer(self, z: Tensor, labels: Tensor, client: int, round_: int, epoch: int, batch: int) -> None:
        """Consider every sample of one batch for the reservoir."""
        if self.capacity == 0:
            return
        z = z.detach().cpu()
        if self.z is None:
            self.z = torch.zeros(self.capacity, *z.shape[1:], dtype=z.dtype)
        for position in range(len(z)):
            slot = self.seen if self.seen < self.capacity else int(torch.randint(self.seen + 1, (1,), generator=self.generator))
            self.seen += 1
            if slot < self.capacity:
                self.z[slot] = z[position]
                self.labels[slot] = labels[position]
                self.meta[slot] = torch.tensor([client, round_, epoch, batch, position])

    def state_dict(self) -> dict[str, object]:
        kept = min(self.seen, self.capacity)
        return {
            "z": self.z[:kept].clone() if self.z is not None else torch.zeros(0),
            "labels": self.labels[:kept].clone(),
            "meta": self.meta[:kept].clone(),
            "fields": list(FIELDS),
            "seen": self.seen,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        z = state["z"]
        assert isinstance(z, Tensor)
        kept = len(z)
        self.seen = int(state["seen"])  # type: ignore[arg-type]
        self.generator.set_state(state["generator"])  # type: ignore[arg-type]
        if kept:
            self.z = torch.zeros(self.capacity, *z.shape[1:], dtype=z.dtype)
            self.z[:kept] = z
        self.labels[:kept] = state["labels"]  # type: ignore[index]
        self.meta[:kept] = state["meta"]  # type: ignore[index]

    def save(self, path: Path) -> None:
        atomic_torch_save(self.state_dict(), path)
