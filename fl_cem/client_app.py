"""ClientApp: unpack a message, call the one :class:`SplitClient` method for its type, pack the reply.

What lives here is Flower's side only: the run and node config, ``context.state`` (the client's
state, serialised once per message and reused by replies that carry it) and records. The
protocol itself (what a client does with each message and what it answers) is
``fl_cem/federated/client_logic.py``'s.

Message types: ``query.hello``, ``query.restore``, ``query.cem_centres``, ``query.cem_stats``,
``train.step`` and ``evaluate.test`` (see docs/ARCHITECTURE.md for the protocol).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod
from torch import Tensor

from fl_cem.config import Config
from fl_cem.federated.client_logic import Reply, SplitClient
from fl_cem.federated.wire import from_record, metric_record, pack_state, to_record, unpack_state
from fl_cem.training.setup import resolve_device

STATE_KEY = "split-client"


def make_client_app(overrides: Mapping[str, Any] | None = None, mods: list[Mod] | None = None) -> ClientApp:
    """A ClientApp whose run config is ``context.run_config`` updated with ``overrides``."""
    app = ClientApp(mods=mods)

    def open_client(context: Context) -> SplitClient:
        cfg = Config.from_flat({**context.run_config, **(overrides or {})})
        pid = int(context.node_config.get("partition-id", 0))
        count = int(context.node_config.get("num-partitions", cfg.partition.num_partitions))
        saved = unpack_state(context.state[STATE_KEY]) if STATE_KEY in context.state else None
        return SplitClient(cfg, pid, count, resolve_device(cfg.run.device), saved)

    def reply(message: Message, context: Context, client: SplitClient, answer: Reply) -> Message:
        state = pack_state(client.state())
        context.state[STATE_KEY] = state
        records: dict[str, Any] = {name: to_record(tensors) for name, tensors in answer.arrays.items()}
        records |= {name: metric_record(values) for name, values in answer.metrics.items()}
        if answer.state:
            records["state"] = ConfigRecord({"blob": state["blob"]})  # the same bytes, not a second serialisation
        meta = ConfigRecord({"partition_id": client.partition_id, **answer.config})
        return Message(RecordDict({"config": meta, **records}), reply_to=message)

    def handler(body: Callable[[Message, SplitClient], Reply]) -> Callable[[Message, Context], Message]:
        def handle(message: Message, context: Context) -> Message:
            client = open_client(context)
            return reply(message, context, client, body(message, client))

        return handle

    def tensors(message: Message, name: str) -> dict[str, Tensor] | None:
        """The tensors of record ``name``, when the message has it."""
        return from_record(message.content[name]) if name in message.content else None  # type: ignore[arg-type]

    @handler
    def hello(message: Message, client: SplitClient) -> Reply:
        return Reply(config=client.hello())

    def peers(message: Message) -> tuple[list[int], str]:
        """The partition ids of the refit's sum and its nonce (secure aggregation's masks)."""
        config = message.content["config"]
        return [int(p) for p in config["peers"]], str(config["nonce"])  # type: ignore[union-attr]

    @handler
    def cem_centres(message: Message, client: SplitClient) -> Reply:
        previous = tensors(message, "centres")
        seed = int(message.content["config"]["seed"])
        upload = client.centres_upload(previous["centres"] if previous else None, seed, tensors(message, "encoder"), *peers(message))
        return Reply(arrays={"centres": upload})

    @handler
    def cem_stats(message: Message, client: SplitClient) -> Reply:
        return Reply(arrays={"stats": client.stats_upload(from_record(message.content["centres"])["centres"], *peers(message))})

    @handler
    def train_step(message: Message, client: SplitClient) -> Reply:
        config = message.content["config"]
        start = (int(config["first_epoch"]), int(config["epochs"]), int(config["clients"])) if config["start"] else None
        grads = tensors(message, "grads")
        return client.train_step(
            int(config["chunk"]), grads["grads"] if grads else None, tensors(message, "encoder"), tensors(message, "mixture"), start
        )

    @handler
    def evaluate_test(message: Message, client: SplitClient) -> Reply:
        return client.evaluate_round(int(message.content["config"]["seed"]), tensors(message, "encoder"))

    def restore(message: Message, context: Context) -> Message:
        context.state[STATE_KEY] = message.content["state"]
        return Message(RecordDict({"config": ConfigRecord({"restored": True})}), reply_to=message)

    app.query("hello")(hello)
    app.query("restore")(restore)
    app.query("cem_centres")(cem_centres)
    app.query("cem_stats")(cem_stats)
    app.train("step")(train_step)
    app.evaluate("test")(evaluate_test)
    return app


app = make_client_app()
