"""ClientApp: unpack a message, call the client logic, pack the reply. No logic lives here.

Message types: ``query.hello``, ``query.restore``, ``query.cem_centres``, ``query.cem_stats``,
``train.step`` and ``evaluate.test`` (see docs/ARCHITECTURE.md for the protocol).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod

from fl_cem.cem import MixtureStats
from fl_cem.config import Config
from fl_cem.federated.client_logic import SplitClient
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

    def reply(message: Message, context: Context, client: SplitClient, **records: Any) -> Message:
        context.state[STATE_KEY] = pack_state(client.state())
        meta = ConfigRecord({"partition_id": client.partition_id, **records.pop("config", {})})
        return Message(RecordDict({"config": meta, **records}), reply_to=message)

    def handler(body: Callable[[Message, SplitClient], dict[str, Any]]) -> Callable[[Message, Context], Message]:
        def handle(message: Message, context: Context) -> Message:
            client = open_client(context)
            return reply(message, context, client, **body(message, client))

        return handle

    @handler
    def hello(message: Message, client: SplitClient) -> dict[str, Any]:
        return {"config": client.hello()}

    @handler
    def cem_centres(message: Message, client: SplitClient) -> dict[str, Any]:
        if "encoder" in message.content:  # a refit within the round fits the encoders just averaged
            client.load_encoder(from_record(message.content["encoder"]))
        previous = from_record(message.content["centres"])["centres"] if "centres" in message.content else None
        centres, counts = client.local_centres(previous, int(message.content["config"]["seed"]))
        return {"centres": to_record({"centres": centres, "counts": counts})}

    @handler
    def cem_stats(message: Message, client: SplitClient) -> dict[str, Any]:
        return {"stats": to_record(client.local_stats(from_record(message.content["centres"])["centres"]).state_dict())}

    @handler
    def train_step(message: Message, client: SplitClient) -> dict[str, Any]:
        config = message.content["config"]
        if "encoder" in message.content:
            client.load_encoder(from_record(message.content["encoder"]))
        if config["start"]:
            client.start_round(int(config["first_epoch"]), int(config["epochs"]), int(config["clients"]))
        if "mixture" in message.content:
            client.load_mixture(MixtureStats.from_state_dict(from_record(message.content["mixture"])))
        if "grads" in message.content:
            client.apply_gradients(from_record(message.content["grads"])["grads"])
        if client.done:
            metrics = {"num_examples": float(len(client.loader.indices)), **client.round_metrics()}
            return {
                "config": {"status": "done"},
                "metrics": metric_record(metrics),
                "encoder": to_record(client.encoder_state()),
                "state": pack_state(client.state()),
            }
        if client.sync_due:
            return {
                "config": {"status": "sync", "average": client.averaging_due, "refit": client.global_refit_due, "epoch": client.cursor.epoch},
                "metrics": metric_record({"num_examples": float(len(client.loader.indices))}),
                "encoder": to_record(client.encoder_state()),
            }
        z, y, epochs, sizes = client.next_chunk(int(config["chunk"]))
        batches = [b for _, b in client.cursor.pending]
        return {"config": {"status": "batch", "epochs": epochs, "sizes": sizes, "batches": batches}, "smashed": to_record({"z": z, "y": y})}

    @handler
    def evaluate_test(message: Message, client: SplitClient) -> dict[str, Any]:
        if "encoder" in message.content:
            client.load_encoder(from_record(message.content["encoder"]))
        seed = int(message.content["config"]["seed"])
        z, y = client.evaluate("test", seed)
        z_local, y_local = client.evaluate("local_test", seed)
        report = metric_record(client.cem_report(seed))
        return {
            "smashed": to_record({"z": z, "y": y}),
            "smashed_local": to_record({"z": z_local, "y": y_local}),
            "cem": report,
            "state": pack_state(client.state()),
        }

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
