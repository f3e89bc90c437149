"""The server's message window (federated.max-in-flight): never more pushed than allowed, order kept."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from fl_cem.federated.exchange import Exchange, id_ranges


@dataclass
class FakeGrid:
    """Answers each pushed message when ``answer`` is called; records what Flower held at a time."""

    pushed: list[int] = field(default_factory=list)
    held: dict[str, Any] = field(default_factory=dict)
    most_held: int = 0

    def push_messages(self, messages: list[Any]) -> list[str]:
        ids = []
        for msg in messages:
            msg_id = f"m{len(self.pushed)}"
            self.pushed.append(msg.metadata.dst_node_id)
            self.held[msg_id] = msg
            ids.append(msg_id)
        self.most_held = max(self.most_held, len(self.held))
        return ids

    def pull_messages(self, ids: list[str]) -> list[Any]:
        replies = []
        for msg_id in ids[:2]:  # two replies per pull: the rest are still being computed
            msg = self.held.pop(msg_id)
            replies.append(SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=msg_id, src_node_id=msg.metadata.dst_node_id), has_error=lambda: False))
        return replies


def message(node: int) -> Any:
    """The part of a Message the exchange reads (a real one needs a running Flower run)."""
    return SimpleNamespace(metadata=SimpleNamespace(dst_node_id=node))


def test_window_bounds_what_flower_holds_and_keeps_the_order() -> None:
    # Prepare
    grid = FakeGrid()
    exchange = Exchange(grid, timeout=60.0, log=print, window=3)  # type: ignore[arg-type]
    # Execute
    replies = exchange.gather([message(node) for node in range(10, 20)])
    # Assert: never more than three held, every message sent once, in the order given
    assert grid.most_held == 3
    assert grid.pushed == list(range(10, 20))
    assert len(replies) == 10 and not exchange.pending


def test_no_window_pushes_everything_at_once() -> None:
    grid = FakeGrid()
    exchange = Exchange(grid, timeout=60.0, log=print)  # type: ignore[arg-type]
    exchange.send([message(node) for node in range(8)])
    assert grid.most_held == 8 and not exchange.queued


def test_partition_ids_log_as_runs() -> None:
    assert id_ranges(range(1000)) == "0-999"
    assert id_ranges([9, 0, 1, 2, 5, 7, 8, 12]) == "0-2, 5, 7-9, 12"
    assert id_ranges([3]) == "3"
