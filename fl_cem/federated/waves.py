"""Which smashed-data replies the ServerApp serves now, and which it serves together.

``lockstep`` serves in waves: every active client's next reply once, in partition order, each
as soon as it and its predecessors in the wave are in, so the sequence of decoder steps does not
depend on timing. Within a wave, replies are served in groups:

- exact SplitFed V2 (neither ``server-mix`` nor ``server-batch``): each reply alone, so early
  clients compute their next batch while the server works through the later ones;
- ``server-mix``: the whole wave at once (:meth:`SplitServer.serve_wave` pools and shuffles it);
- ``server-batch`` alone: consecutive replies until they hold at least that many images (or the
  wave ends), so many small clients share a decoder step while the clients of the wave already
  served compute on.

``arrival`` serves every reply the moment it is in, each alone.
"""

from __future__ import annotations

import math
from typing import Callable, Generic, TypeVar

from fl_cem.config.federated import FederatedConfig

Reply = TypeVar("Reply")


class Waves(Generic[Reply]):
    """The serving order of one round; ``restart`` after a sync point begins a fresh wave."""

    def __init__(self, fed: FederatedConfig, partition: Callable[[int], int], rows: Callable[[Reply], int]) -> None:
        self.lockstep = fed.order == "lockstep"
        self.group_rows = math.inf if fed.server_mix else fed.server_batch
        """A group closes once it holds this many images: 0 serves each reply alone."""
        self.partition = partition
        self.rows = rows
        self.order: list[int] = []
        """The nodes of the current wave not yet taken, in serving order."""
        self.group: list[Reply] = []
        self.group_size = 0

    def restart(self) -> None:
        self.order.clear()

    def release(self, waiting: dict[int, Reply], active: set[int]) -> list[list[Reply]]:
        """Take the replies that may be served now out of ``waiting``: groups in serving order."""
        if not self.lockstep:
            ready = [waiting.pop(node) for node in sorted(waiting, key=self.partition)]
            return [[reply] for reply in ready]
        groups: list[list[Reply]] = []
        while True:
            if not self.order:
                if not active:
                    break
                self.order = sorted(active, key=self.partition)
            node = self.order[0]
            if node not in active:
                self.order.pop(0)
            elif node in waiting:
                reply = waiting.pop(self.order.pop(0))
                self.group.append(reply)
                self.group_size += self.rows(reply)
                if self.group_size < self.group_rows and self.order:
                    continue
            else:
                break
            if self.group and (self.group_size >= self.group_rows or not self.order):
                groups.append(self.group)
                self.group, self.group_size = [], 0
        return groups
