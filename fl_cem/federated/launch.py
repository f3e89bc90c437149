"""Run a federated experiment from Python (sweeps, benchmarks, tests) without the ``flwr`` CLI.

``flwr run .`` is the product's entry point; this in-process launcher runs the same ServerApp
and ClientApp through Flower's simulation engine, with the config passed as overrides because
``run_simulation`` hands the apps an empty run config.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fl_cem.config import Config
from fl_cem.reporting.run_dir import RunDir


def run_federated(cfg: Config, num_clients: int | None = None, client_cpus: float = 1.0, mods: list | None = None) -> dict[str, Any]:
    """Simulate ``num_clients`` supernodes (default ``partition.num-partitions``); returns results.json.

    Raises
    ------
    RuntimeError
        When the run ended without a final summary (Flower reports some failures only in logs).
    """
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    from flwr.simulation import run_simulation

    from fl_cem.client_app import make_client_app
    from fl_cem.server_app import make_server_app

    clients = num_clients or cfg.partition.num_partitions
    # Ray workers need not share this process's working directory: pass absolute paths.
    absolute = {"run.output-dir": str(Path(cfg.run.output_dir).resolve())}
    if cfg.data.root:
        absolute["data.root"] = str(Path(cfg.data.root).expanduser().resolve())
    overrides = {**cfg.to_flat(), **absolute, "partition.num-partitions": clients}
    run_simulation(
        server_app=make_server_app(overrides),
        client_app=make_client_app(overrides, mods=mods),
        num_supernodes=clients,
        backend_config={"client_resources": {"num_cpus": client_cpus}, "init_args": {"include_dashboard": False}},
    )
    results = RunDir.for_config(cfg).read_results()
    if "final" not in results:
        raise RuntimeError(f"federated run {cfg.run.name} ended without a final summary; see the log above")
    return results
