"""Messages between the ServerApp and the clients: push, pull as replies arrive, deadlines.

Push/pull is done here rather than with ``grid.send_and_receive``: that call waits for all
replies and sleeps between pulls, while split learning needs to answer each client as soon as
its batch arrives (benchmarks/federated_overhead.py measures the costs).

Node discovery lives here too: node ids are random, so the server asks every node for its
partition before the first round.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from fl_cem.config import Config

POLL_SECONDS = 0.005
NODE_WAIT_SECONDS = 120.0


class TooFewClients(RuntimeError):
    """Raised when fewer than ``federated.min-clients`` clients are left in a round."""


class ClientFailed(RuntimeError):
    """A client could not even start (its first message failed): the run stops with its cause."""


def client_cause(reason: str) -> str:
    """The client's own message out of Flower's error report.

    Flower reports a ClientApp exception as ``<class '...ClientAppException'>:<'Exception
    ClientAppException occurred. Message: ...'>``, around the traceback in some versions; the
    part after ``Message:`` is what our code raised.
    """
    text = reason.strip()
    if "Message: " in text:
        text = text.split("Message: ", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[-1] if lines else text).removesuffix("'>").strip()


@dataclass
class Exchange:
    """Messages in flight, pulled as they arrive, with a deadline per message.

    At most ``window`` messages are pushed at a time (0: no limit); the rest wait here, in the
    order they were sent, and are pushed as replies come back. Flower's simulation engine scans
    every stored message once per node every 0.1 s (``vce_api.add_messages_to_queue`` calls
    ``InMemoryLinkState.get_message_ins`` per node, which walks the whole store), a pure-Python
    loop of nodes x messages that holds the driver's GIL: at N = 1,000 with 100 messages pushed
    it took a core and slowed the server's decoder steps several-fold (README, "1,000 clients").
    Only messages that Flower holds count: a reply pulled and waiting to be served does not, so
    the window never stalls the round. The order of sends is kept, and lockstep sends in the order
    it serves, so results do not depend on the window.
    """

    grid: Grid
    timeout: float
    log: Callable[[str], None]
    window: int = 0
    in_flight: dict[str, tuple[int, float]] = field(default_factory=dict)
    queued: deque[Message] = field(default_factory=deque)
    replies: int = 0
    round_trip_s: float = 0.0

    def send(self, messages: Iterable[Message]) -> None:
        self.queued.extend(messages)
        self._release()

    def _release(self) -> None:
        """Push queued messages while the window has room; the deadline runs from the push."""
        room = len(self.queued) if self.window <= 0 else self.window - len(self.in_flight)
        batch = [self.queued.popleft() for _ in range(min(room, len(self.queued)))]
        if not batch:
            return
        now = time.monotonic()
        for msg_id, msg in zip(self.grid.push_messages(batch), batch):
            self.in_flight[msg_id] = (msg.metadata.dst_node_id, now)

    @property
    def pending(self) -> bool:
        """Messages pushed and not yet answered, or still waiting for the window."""
        return bool(self.in_flight or self.queued)

    def receive(self) -> tuple[list[Message], list[int]]:
        """Replies that arrived, and nodes whose message ran past the deadline (dropped)."""
        self._release()
        replies = list(self.grid.pull_messages(list(self.in_flight))) if self.in_flight else []
        now = time.monotonic()
        for reply in replies:
            sent = self.in_flight.pop(reply.metadata.reply_to_message_id, None)
            if sent is not None:
                self.replies += 1
                self.round_trip_s += now - sent[1]
        expired = [msg_id for msg_id, (_, sent) in self.in_flight.items() if now - sent > self.timeout]
        late = [self.in_flight.pop(msg_id)[0] for msg_id in expired]
        for node in late:
            self.log(f"client on node {node} did not answer within {self.timeout:.0f}s; left out of this round")
        self._release()
        if not replies and self.in_flight:
            time.sleep(POLL_SECONDS)
        return replies, late

    def ask(self, message: Message) -> Message:
        """One message and its reply; a client that fails or does not answer ends the run at once.

        The first message a client gets builds its data and model: when that fails (a missing
        data root, a dataset that cannot be downloaded), every client will fail the same way,
        so waiting for the others would only hide the cause behind a timeout.
        """
        self.send([message])
        while self.pending:
            replies, late = self.receive()
            if late:
                raise ClientFailed(f"client on node {late[0]} did not answer its first message within {self.timeout:.0f}s (federated.client-timeout)")
            for reply in replies:
                if reply.has_error():
                    raise ClientFailed(f"a client failed on its first message: {client_cause(reply.error.reason)}")
                return reply
        raise ClientFailed("no reply")

    def gather(self, messages: Iterable[Message]) -> list[Message]:
        """Send and wait for all replies (or their deadlines); errors are logged and dropped."""
        self.send(messages)
        good: list[Message] = []
        while self.pending:
            replies, _ = self.receive()
            for reply in replies:
                if reply.has_error():
                    self.log(f"client on node {reply.metadata.src_node_id} failed: {reply.error.reason}")
                else:
                    good.append(reply)
        return good


def discover(grid: Grid, exchange: Exchange, cfg: Config, log: Callable[[str], None]) -> dict[int, dict[str, Any]]:
    """Wait for the nodes, then ask each for its partition and data shape (node ids are random)."""
    deadline = time.monotonic() + NODE_WAIT_SECONDS
    expected = None
    while True:
        nodes = sorted(grid.get_node_ids())
        if nodes and expected is None:
            first = exchange.ask(Message(RecordDict(), nodes[0], "query.hello"))
            expected = int(first.content["config"]["num_partitions"])
        if expected is not None and len(nodes) >= expected:
            break
        if time.monotonic() > deadline:
            raise TooFewClients(f"only {len(nodes)} nodes connected after {NODE_WAIT_SECONDS:.0f}s (expected {expected})")
        time.sleep(0.5)
    replies = exchange.gather([Message(RecordDict(), node, "query.hello") for node in nodes])
    info = {r.metadata.src_node_id: dict(r.content["config"]) for r in replies}
    if len(info) < cfg.federated.min_clients:
        raise TooFewClients(f"{len(info)} clients answered, federated.min-clients is {cfg.federated.min_clients}")
    shapes = {tuple(i["shape"]) for i in info.values()}
    if len(shapes) != 1:
        raise ValueError(f"clients hold data of different shapes: {sorted(shapes)}")
    log(f"{len(info)} clients: partitions {id_ranges(int(i['partition_id']) for i in info.values())}")
    return info


def id_ranges(ids: Iterable[int]) -> str:
    """``0-9, 12, 14-15``: partition ids as runs, so a thousand clients log one short line."""
    runs: list[list[int]] = []
    for i in sorted(set(ids)):
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)
